"""`rlbench demo quick=true` end to end: every file the report links exists, the console stays
quiet, and ABMIL's attention localises the planted islands."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from rl_benchmarks.cli.main import run

#: The quick demo's whole console output (stdout + stderr, progress bars one line each) must
#: fit on one screen: about 40 lines were measured (header, bar and summary per stage).
MAX_LINES = 50


@pytest.mark.slow
def test_demo_quick_produces_every_linked_file(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run("demo", [f"output_dir={out}", "quick=true", "screenshot=false"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # Screen lines: a progress bar redraws itself with \r, one line (str.splitlines would split at \r).
    lines = [line for text in (captured.out, captured.err) for line in text.rstrip("\n").split("\n")]
    assert len(lines) < MAX_LINES, "\n".join(lines)
    assert not [line for line in lines if line.startswith("INFO ")], "log records on the console"
    assert sum(line.startswith("rlbench cv: ") and "->" in line for line in lines) == 6  # header + done
    assert (out / "config.yaml").is_file() and (out / "tiles" / "config.yaml").is_file()
    assert len(list((out / "cv" / "cross_validation").glob("*/config.yaml"))) == 3
    assert "RANDOMLY INITIALISED" in printed and str(out / "report.html") in printed
    html = (out / "report.html").read_text()
    links = set(re.findall(r'(?:src|href)="([^"#:]+)"', html))
    assert links, "the report links nothing"
    missing = [link for link in links if not (out / unquote(link)).exists()]
    assert not missing, f"report links missing files: {missing[:5]}"
    # Each stage left its outputs: QC pictures, features, three CV experiments, heatmaps.
    assert len(list((out / "tiles").glob("*/qc.png"))) == 24
    assert len(list((out / "features").glob("*/features.npy"))) == 24
    experiments = list((out / "cv" / "cross_validation").glob("*/status.json"))
    assert len(experiments) == 3
    assert list((out / "heatmaps").glob("*.png"))
    assert any(Path(p).name.endswith("_km.png") for p in links)
    assert any(Path(p).name.endswith("_roc.png") for p in links)
    table = pd.read_csv(out / "results_table.csv")
    assert len(table) == 3
    assert "RANDOMLY INITIALISED" in html
    # Localisation of the planted islands: every positive test slide, each experiment with tile
    # scores; ABMIL's attention points at the islands (measured 0.98 in quick mode).
    loc = pd.read_csv(out / "localisation.csv")
    assert set(loc["model"]) == {"ABMIL", "Chowder"} and loc["auroc"].between(0, 1).all()
    abmil = loc[loc.experiment.str.startswith("cohort_classification") & (loc.model == "ABMIL")]
    assert len(abmil) == 11 and abmil["auroc"].mean() > 0.8, abmil
    assert "Localisation of the planted islands" in html
    assert 'id="localisation-table"' in html  # report.html's Localisation section, from localisation.csv
