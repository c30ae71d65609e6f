"""``extract-slides`` split across independent sweep jobs (``shard=range(K) num_shards=K``)
writes exactly the files of one job, with equal arrays and records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.extraction.sharding import given_tile_counts, select_shard, shard_by_cost

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2",
        "num_workers=0", "batch_size=8", "progress=false", "n_tiles=6"]


def _slides(folder: Path) -> Path:
    """Four small pyramidal TIFFs with tissue blocks of different sizes, and one without
    tissue (a failure in every run)."""
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(700, 800), (300, 900), (500, 500), (900, 900), (0, 0)]):
        img = np.full((1000, 1000, 3), 244, np.uint8)
        if h:
            img[50:50 + h, 50:50 + w] = np.clip(
                np.array([200, 110, 170]) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        write_pyramidal_tiff(folder / f"s{i}.tif", img, mpp=0.5, tile_size=256, compression="jpeg")
    return folder


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in ("seconds",)}
    return obj


def test_select_shard_partitions_like_torchrun_ranks():
    costs = [5, 1, 9, 3, 3, 7, 2]
    shards = [select_shard(costs, i, 3) for i in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    assert shards == shard_by_cost(costs, 3)  # the torchrun rule, rank by rank
    with pytest.raises(ValueError, match="shard must be an integer in"):
        select_shard(costs, 3, 3)
    with pytest.raises(ValueError, match="num_shards must be a positive integer"):
        select_shard(costs, 0, 0)


def test_given_tile_counts(tmp_path):
    paths = []
    for n in (4, 10):
        paths.append(tmp_path / f"{n}.npy")
        np.save(paths[-1], np.zeros((n, 3), np.int64))
    assert given_tile_counts(paths, None) == [4, 10]
    assert given_tile_counts(paths, 6) == [4, 6]
    assert given_tile_counts([paths[0], None], 6) == [1, 1]  # unknown before tiling


@pytest.mark.slow
def test_three_shard_jobs_write_the_files_of_one_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slides = _slides(tmp_path / "slides")
    one, three = tmp_path / "one", tmp_path / "features"  # records hold the output folder:
    assert rlbench(["extract-slides", f"slides={slides}", f"output_dir={three}", *TINY]) == 1
    three.rename(one)  # the one-job run is moved away, the sweep writes the same folder
    code = rlbench(["extract-slides", "-m", f"slides={slides}", f"output_dir={three}",
                    "shard=range(3)", "num_shards=3", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    *TINY])
    assert code == 1  # the slide without tissue fails in its shard, as in one job

    a, b = _files(one), _files(three)
    assert sorted(a) == sorted(b)
    assert not any(".lock" in name or ".rlbench_shards" in name for name in b)
    npys = [n for n in a if n.endswith(".npy")]
    assert len([n for n in npys if n.endswith("features.npy")]) == 4
    for name in npys:
        np.testing.assert_array_equal(np.load(a[name]), np.load(b[name]))
    for name in (n for n in a if n.endswith(".json")):
        assert _without_timing(json.loads(a[name].read_text())) == \
            _without_timing(json.loads(b[name].read_text())), name
    fa, fb = pd.read_csv(one / "failures.csv"), pd.read_csv(three / "failures.csv")
    assert list(fa["slide_id"]) == list(fb["slide_id"]) == ["s4.tif"]

    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]].count("failed") == 1
    assert summary["exit_code"] == 1
