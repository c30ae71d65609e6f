"""report.html: every link resolves, and headless Chromium shows the table and every picture."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from testlib.html import TableText

from rl_benchmarks.reports.browser import dump_dom, find_chromium, screenshot
from rl_benchmarks.reports.report import build_report
from rl_benchmarks.utils.io import write_csv

from ._data import binary_predictions, survival_predictions, write_per_fold


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.img: list[str] = []
        self.href: list[str] = []
        self.tables: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.img.append(a["src"])
        if tag == "a" and not a.get("href", "").startswith("#"):
            self.href.append(a["href"])
        if tag == "table":
            self.tables.append(a.get("id", ""))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder like the demo's: two classification experiments, one survival, QC, a heatmap."""
    root = tmp_path_factory.mktemp("run") / "my run"  # a space: links must be URL-quoted
    write_per_fold(binary_predictions(seed=1), root / "cv" / "abmil")
    write_csv(root / "cv" / "chowder" / "predictions.csv", binary_predictions(seed=2, effect=0.5), index=False)
    write_csv(root / "cv" / "cox_meanpool" / "predictions.csv", survival_predictions(), index=False)
    rng = np.random.default_rng(0)
    for rel in ("qc/SYN-P001-S1_qc.png", "qc/SYN-P002-S1_qc.png", "heatmaps/SYN-P001-S1_abmil.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / rel)
    return root


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir, notes=["Features come from a randomly initialised ViT."])


def test_report_links_every_picture_and_resolves(report, run_dir):
    assert report.path == run_dir / "report.html"
    assert report.experiments == ["cv/abmil", "cv/chowder", "cv/cox_meanpool"]
    assert sorted(p.name for p in report.figures) == [
        "cv_abmil_roc.png", "cv_chowder_roc.png", "cv_cox_meanpool_km.png"]
    page = report.path.read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.tables == ["results-table"]
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png")}
    assert {unquote(s) for s in parser.img} == on_disk and len(on_disk) == 6
    for link in parser.img + parser.href:
        assert not re.match(r"^[a-z]+:|^/", link), f"absolute link {link}"
        assert (run_dir / unquote(link)).is_file(), link
    assert (run_dir / "results_table.csv").is_file()
    assert "randomly initialised ViT" in page
    # Sections: ROC before Kaplan–Meier before heatmaps before QC.
    order = [page.index(f'id="{k}"') for k in ("results", "roc", "km", "heatmap", "qc")]
    assert order == sorted(order)


def test_results_csv_is_preferred_when_present(tmp_path):
    write_per_fold(binary_predictions(), tmp_path / "cv" / "abmil")
    write_csv(tmp_path / "results.csv", pd.DataFrame({"model": ["ABMIL"], "mean_auc": [0.9], "std_auc": [0.01]}),
              index=False)
    rep = build_report(tmp_path, draw_figures=False)
    assert rep.table_source == "results.csv"
    assert rep.table.to_dict("records") == [{"model": "ABMIL", "auc": "0.900 ± 0.010"}]
    assert rep.figures == []


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="chromium not installed (apt-get install chromium)")


@needs_chromium
def test_report_in_headless_chromium(report, run_dir, tmp_path):
    dom = dump_dom(report.path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-images-(\w+)="(\d+)"', body))
    assert attrs == {"total": "6", "ok": "6", "broken": "0"}, body
    table = re.search(r'<table[^>]*id="results-table".*?</table>', dom, re.S)
    assert table is not None
    for name in ("cv/abmil", "cv/chowder", "cv/cox_meanpool"):
        assert f"<td>{name}</td>" in table.group(0)
    assert "all 6 pictures loaded" in dom

    shot = screenshot(report.path, tmp_path / "report_screenshot.png", width=1000, height=1400)
    with Image.open(shot) as im:
        assert im.size == (1000, 1400)
        px = np.asarray(im.convert("RGB"))
    assert px.std() > 10  # not a blank page


@needs_chromium
def test_chromium_check_catches_a_broken_picture(tmp_path):
    write_per_fold(binary_predictions(), tmp_path / "cv" / "abmil")
    Image.new("RGB", (20, 20), "red").save(tmp_path / "qc_gone.png")
    rep = build_report(tmp_path)
    (tmp_path / "qc_gone.png").unlink()
    dom = dump_dom(rep.path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images-broken="1"' in body and 'data-images-total="2"' in body
    assert "did not load: qc_gone.png" in dom


def test_cli_report(run_dir, capsys):
    from rl_benchmarks.cli.main import main

    assert main(["report", f"run_dir={run_dir}", "draw_figures=false", "title=My run",
                 "notes=random ViT weights"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "experiments: 3" in out
    page = (run_dir / "report.html").read_text()
    assert "<title>My run</title>" in page and '<p class="note">random ViT weights</p>' in page
    assert main(["report", f"run_dir={run_dir / 'missing'}"]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_report_names_rlbench_cv_experiments(tmp_path):
    from omegaconf import OmegaConf

    exp = tmp_path / "cross_validation" / "Zm9vYmFy"
    frame = binary_predictions()
    for k, g in frame.groupby("fold"):
        write_csv(exp / "predictions" / f"repeat_1_split_{k + 1}.csv",
                  g.assign(fold=f"repeat_1_split_{k + 1}"), index=False)
    import pickle  # the reference's params.pkl: a pickled DictConfig, read as plain data

    (exp / "params.pkl").write_bytes(pickle.dumps(OmegaConf.create({"task": {
        "data": {"feature_extractor": "iBOTViTBasePANCAN", "train": {"cohort": "TCGA_CRC", "label": "MSI"}},
        "validation_scheme": {"trainer_cfg": {"model": {"_target_": "rl_benchmarks.models.ABMIL"}}}}})))
    rep = build_report(tmp_path)
    assert rep.experiments == ["tcga_crc_msi_prediction · ABMIL · iBOTViTBasePANCAN"]
    assert [p.name for p in rep.figures] == ["tcga_crc_msi_prediction_ABMIL_iBOTViTBasePANCAN_roc.png"]
    assert rep.table["n_folds"].tolist() == [5]


def _cv_run(root, name: str, cohort: str, extractor: str = "phikon", seed: int = 0) -> None:
    """A ``rlbench cv`` run folder written by the experiment layer's writers."""
    from rl_benchmarks.val_schemes.experiment import experiment_folder

    exp = experiment_folder(root, name)
    exp.reset()
    frame = binary_predictions(seed=seed)
    exp.write_params({"task": {"data": {"train": {"cohort": cohort, "label": None}},
                               "validation_scheme": {"n_splits_outer": 5, "n_repeats_outer": 1, "trainer_cfg": {
                                   "model": {"_target_": "rl_benchmarks.models.ABMIL"}}}}},
                     {"features": {"extractor": extractor}})
    metrics = {}
    for k, g in frame.groupby("fold"):
        key = f"repeat_1_split_{k + 1}"
        exp.write_predictions(key, g.assign(fold=key))
        metrics[key] = [0.5 + 0.05 * k]
    exp.write_metrics("test", {"auc": metrics})
    exp.write_summary({"extractor": extractor})
    exp.write_status(True)


def test_names_have_no_path_and_same_stems_stay_distinct(tmp_path):
    """Two cohorts ``cohort.csv`` in two folders: distinct experiment names, distinct short
    figure names, and no absolute path in report.html's tables or in a figure file name."""
    from rl_benchmarks.val_schemes.results import collect_results

    logs = tmp_path / "run"
    site_a, site_b = str(tmp_path / "site_a" / "cohort.csv"), str(tmp_path / "site_b" / "cohort.csv")
    _cv_run(logs, "expA", site_a, seed=1)
    _cv_run(logs, "expB", site_b, seed=2)
    _cv_run(logs, "expC", site_b, extractor="resnet50", seed=3)
    write_csv(logs / "cross_validation" / "nested_cross_validation_results.csv", collect_results(logs),
              index=False)  # what `rlbench results` writes: its cohort column holds the paths
    rep = build_report(logs)
    assert len(rep.experiments) == len(set(rep.experiments)) == 3
    assert all(re.fullmatch(r"cohort \[[0-9a-f]{6}\] · ABMIL · (phikon|resnet50)", e) for e in rep.experiments)
    assert len({e.split(" · ")[0] for e in rep.experiments}) == 2
    names = [p.name for p in logs.rglob("*.png")]
    assert len(set(names)) == 4 and "benchmark.png" in names  # 3 ROC + the benchmark figure
    page = rep.path.read_text()
    parser = TableText()
    parser.feed(page)
    tables = " ".join(parser.text)
    assert "cohort.csv" in tables and "cohort [" in tables  # the cohort is shown, by name
    for text in [tables, *names]:
        assert str(tmp_path) not in text and "site_a" not in text and "site_b" not in text
    assert 'id="benchmark-table"' in page and "Benchmark" in page
