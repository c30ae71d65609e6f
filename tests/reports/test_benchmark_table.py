"""The benchmark table (`rlbench results`): cells, missing and incomplete experiments, the
paired comparison (checked against scipy directly) and the refusal to pair other splits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rl_benchmarks.reports.benchmark_table import (
    NOT_SIGNIFICANT,
    SplitMismatchError,
    benchmark_table,
    compare,
    write_benchmark,
)
from rl_benchmarks.val_schemes.experiment import experiment_folder

SLIDES = [f"s{i:02d}" for i in range(20)]


def _splits(k: int = 5, shift: int = 0) -> dict[str, list[str]]:
    return {f"repeat_1_split_{s + 1}": [sid for i, sid in enumerate(SLIDES) if (i + shift) % k == s]
            for s in range(k)}


def write_run(root, name: str, cohort: str, model: str, extractor: str, values, *,
              label: str = "label", splits=None, completed: bool = True, task_name=None,
              metric: str = "auc") -> None:
    """One experiment folder written the way ``rlbench cv`` writes it (the experiment
    layer's own writers): params.json, test metrics, predictions per fold, summary, status."""
    exp = experiment_folder(root, name)
    exp.reset()
    k = len(values)
    params = {"task": {"data": {"train": {"cohort": cohort, "label": label}},
                       "validation_scheme": {"n_splits_outer": k, "n_repeats_outer": 1,
                                             "trainer_cfg": {"model": {"_target_": f"rl_benchmarks.models.{model}"}}}},
              "task_name": task_name}
    exp.write_params(params, {"features": {"extractor": extractor, "digest": "f"}, "cohort": {"digest": "c"}})
    if not completed:
        return
    splits = splits or _splits(k)
    exp.write_metrics("test", {metric: {f: [0.5, v] for f, v in zip(splits, values)}})
    for f, ids in splits.items():
        exp.write_predictions(f, pd.DataFrame({"fold": f, "slide_id": ids, "patient_id": ids,
                                               "label": [i % 2 for i in range(len(ids))],
                                               "score": np.linspace(0, 1, len(ids))}))
    exp.write_summary({"extractor": extractor})
    exp.write_status(True)


A_VALUES = [0.81, 0.78, 0.90, 0.85, 0.74]
B_VALUES = [0.70, 0.79, 0.83, 0.80, 0.69]


@pytest.fixture()
def grid(tmp_path):
    """2 tasks × 2 models × 2 extractors, one cell missing and one unfinished."""
    root = tmp_path / "logs"
    rng = np.random.default_rng(0)
    n = 0
    for cohort in ("/data/x/crc.csv", "TCGA_CRC"):
        for model in ("ABMIL", "Chowder"):
            for extractor in ("phikon", "resnet50"):
                n += 1
                if (cohort, model, extractor) == ("TCGA_CRC", "Chowder", "resnet50"):
                    continue  # missing
                values = A_VALUES if extractor == "phikon" else B_VALUES
                if model == "Chowder":
                    values = list(np.clip(np.array(values) + rng.normal(0, 0.02, 5), 0, 1))
                write_run(root, f"exp{n}", cohort, model, extractor, values,
                          label="MSI", completed=(cohort, model, extractor) != ("TCGA_CRC", "ABMIL", "resnet50"))
    return root


def test_table_cells_missing_and_incomplete(grid):
    bench = benchmark_table(grid)
    assert list(bench.table["task"]) == ["crc", "tcga_crc_msi_prediction"]
    assert list(bench.table.columns[2:]) == ["ABMIL · phikon", "ABMIL · resnet50", "Chowder · phikon",
                                             "Chowder · resnet50"]
    assert bench.n_filled == 6
    row = bench.table.set_index("task").loc["crc"]
    assert row["ABMIL · phikon"] == f"{np.mean(A_VALUES):.3f} ± {np.std(A_VALUES):.3f} (n=5)"
    assert row["metric"] == "auc"
    other = bench.table.set_index("task").loc["tcga_crc_msi_prediction"]
    assert other["Chowder · resnet50"] == "missing" and other["ABMIL · resnet50"] == "unfinished"
    assert bench.missing == ["tcga_crc_msi_prediction · Chowder · resnet50"]
    assert [n for n, _ in bench.incomplete] == ["tcga_crc_msi_prediction · ABMIL · resnet50"]


def test_expected_csv_task_matches_by_path_when_names_collide(tmp_path):
    root = tmp_path / "logs"
    write_run(root, "a", "/site1/cohort.csv", "ABMIL", "phikon", A_VALUES)
    write_run(root, "b", "/site2/cohort.csv", "ABMIL", "phikon", B_VALUES)
    bench = benchmark_table(root, expected=[{"task": "/site2/cohort.csv", "model": "abmil", "extractor": "phikon"},
                                            {"task": "/site2/cohort.csv", "model": "chowder", "extractor": "phikon"}])
    site2 = bench.cells.set_index("experiment").loc["b", "task"]
    assert bench.missing == [f"{site2} · chowder · phikon"]


def test_expected_cells_from_a_suite(grid):
    expected = [{"task": "/elsewhere/crc.csv", "model": "abmil", "extractor": "phikon"},
                {"task": "tcga_crc_msi_prediction", "model": "mean_pool", "extractor": "phikon"}]
    bench = benchmark_table(grid, expected=expected)
    assert bench.missing == ["tcga_crc_msi_prediction · mean_pool · phikon"]
    row = bench.table.set_index("task").loc["tcga_crc_msi_prediction"]
    assert row["mean_pool · phikon"] == "missing"
    assert row["Chowder · resnet50"] == ""  # neither run nor expected


def test_a_newer_run_of_the_same_cell_supersedes_the_older(tmp_path):
    import os

    root = tmp_path / "logs"
    write_run(root, "old", "/d/crc.csv", "ABMIL", "phikon", B_VALUES)
    write_run(root, "new", "/d/crc.csv", "ABMIL", "phikon", A_VALUES)
    for f in (root / "cross_validation" / "old").iterdir():
        os.utime(f, (1e9, 1e9))
    bench = benchmark_table(root)
    assert bench.cells["experiment"].tolist() == ["new"]
    assert bench.cells["mean"].tolist() == pytest.approx([np.mean(A_VALUES)])
    assert bench.superseded == ["crc · ABMIL · phikon (old)"]
    assert compare(bench, "phikon", "phikon").rows["n_folds"].tolist() == [5]


def test_paired_comparison_equals_scipy(grid):
    bench = benchmark_table(grid)
    for interval in ("t", "corrected_t"):
        c = compare(bench, "phikon", "resnet50", interval=interval)
        assert c.dimension == "extractor"
        row = c.rows.set_index(["task", "model"]).loc[("crc", "ABMIL")]
        d = np.array(A_VALUES) - np.array(B_VALUES)
        sem = stats.sem(d) if interval == "t" else d.std(ddof=1) * math.sqrt(1 / 5 + 1 / 4)
        low, high = stats.t.interval(0.95, df=4, loc=d.mean(), scale=sem)
        assert row["mean_diff"] == pytest.approx(d.mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
        assert row["flag"] == ("significant" if low > 0 or high < 0 else NOT_SIGNIFICANT)
        # Wilcoxon over every paired task × model × fold, as scipy computes it
        assert c.n_pairs == 10  # crc: 2 models × 5 folds; TCGA: its resnet50 cells are unfinished/missing
        f = bench.folds[bench.folds["task"] == "crc"].sort_values(["model", "fold"])
        a = f[f["extractor"] == "phikon"]["value"].to_numpy()
        b = f[f["extractor"] == "resnet50"]["value"].to_numpy()
        assert list(a[:5]) == pytest.approx(A_VALUES)
        ref = stats.wilcoxon(a, b)
        assert (c.wilcoxon_statistic, c.wilcoxon_p) == pytest.approx((ref.statistic, ref.pvalue))
    assert compare(bench, "ABMIL", "chowder").dimension == "model"


def test_comparing_an_extractor_with_itself_is_never_significant(grid):
    bench = benchmark_table(grid)
    for interval in ("t", "corrected_t"):
        c = compare(bench, "phikon", "phikon", interval=interval)
        assert len(c.rows) == 4 and (c.rows["flag"] == NOT_SIGNIFICANT).all()
        assert (c.rows["mean_diff"] == 0).all() and c.wilcoxon_p == 1.0


def test_refuses_to_pair_other_splits(tmp_path):
    root = tmp_path / "logs"
    write_run(root, "a", "/d/crc.csv", "ABMIL", "phikon", A_VALUES)
    write_run(root, "b", "/d/crc.csv", "ABMIL", "resnet50", B_VALUES, splits=_splits(shift=1))
    bench = benchmark_table(root)
    with pytest.raises(SplitMismatchError, match="different splits") as err:
        compare(bench, "phikon", "resnet50")
    assert "\n" not in str(err.value)


def test_cli_refuses_other_splits_in_one_line(tmp_path, capsys):
    from rl_benchmarks.cli.main import run

    root = tmp_path / "logs"
    write_run(root, "a", "/d/crc.csv", "ABMIL", "phikon", A_VALUES)
    write_run(root, "b", "/d/crc.csv", "ABMIL", "resnet50", B_VALUES, splits=_splits(shift=1))
    assert run("results", [f"logs_root_dir={root}", "compare=phikon,resnet50", "figure=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlbench results: error:") and "different splits" in err and "\n" not in err
    assert run("results", [f"logs_root_dir={root}", "compare=phikon,phikon", "figure=false"]) == 0
    assert "0 of 1 rows significant" in capsys.readouterr().out


def test_write_benchmark_files_and_names(grid):
    bench = write_benchmark(grid, compare_names=["phikon", "resnet50"])
    out = grid / "benchmark"
    assert {p.name for p in out.iterdir()} == {"benchmark_table.csv", "benchmark_cells.csv",
                                                "benchmark_folds.csv", "benchmark_compare.csv",
                                                "benchmark_table.md", "benchmark.png"}
    md = (out / "benchmark_table.md").read_text()
    assert "## Missing experiments" in md and "## Paired comparison: phikon − resnet50" in md
    for f in out.glob("*.csv"):
        assert "/data/x" not in f.read_text(), f  # no path in a table
    assert "/data/x" not in md
    assert pd.read_csv(out / "benchmark_table.csv").shape == (2, 6)
    assert bench.files["figure"].stat().st_size > 0


def test_same_stem_in_two_folders_gets_two_rows(tmp_path):
    root = tmp_path / "logs"
    write_run(root, "a", "/site1/cohort.csv", "ABMIL", "phikon", A_VALUES)
    write_run(root, "b", "/site2/cohort.csv", "ABMIL", "phikon", B_VALUES)
    write_run(root, "c", "/site3/other.csv", "ABMIL", "phikon", B_VALUES, task_name="my task")
    tasks = list(benchmark_table(root).table["task"])
    assert len(tasks) == 3 and "my task" in tasks
    two = sorted(t for t in tasks if t.startswith("cohort ["))
    assert len(two) == 2 and two[0] != two[1]
    assert not any("/" in t for t in tasks)
