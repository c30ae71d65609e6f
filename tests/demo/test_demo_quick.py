"""`rlbench demo quick=true` end to end: every file the report links exists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from rl_benchmarks.cli.main import run


@pytest.mark.slow
def test_demo_quick_produces_every_linked_file(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run("demo", [f"output_dir={out}", "quick=true", "screenshot=false"]) == 0
    printed = capsys.readouterr().out
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
