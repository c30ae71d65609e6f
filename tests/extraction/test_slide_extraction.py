"""Slide feature extraction: exact features, sampling, resume, failures, kill, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.cli.main import run
from rl_benchmarks.extraction.sampling import select_tiles
from rl_benchmarks.extraction.sharding import shard_by_cost

REPO = Path(__file__).resolve().parents[2]


TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


def _extract(slides, out, *extra):
    return run("extract-slides", [f"slides={slides}", f"output_dir={out}", "num_workers=0",
                                  "batch_size=8", "progress=false", *TINY, *extra])


def _tiny_extractor():
    from rl_benchmarks.models.feature_extractors import create_extractor
    from rl_benchmarks.utils.seed import set_seed

    set_seed(0)
    return create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                            num_heads=2)


def test_select_tiles_rules():
    assert select_tiles(5, None, True, 0, "s").tolist() == [0, 1, 2, 3, 4]
    assert select_tiles(5, 10, True, 0, "s").tolist() == [0, 1, 2, 3, 4]
    assert select_tiles(10, 3, False, 0, "s").tolist() == [0, 1, 2]
    a = select_tiles(1000, 20, True, 0, "slide_a")
    assert len(set(a.tolist())) == 20 and np.array_equal(a, select_tiles(1000, 20, True, 0,
                                                                          "slide_a"))
    assert not np.array_equal(a, select_tiles(1000, 20, True, 0, "slide_b"))
    assert not np.array_equal(a, select_tiles(1000, 20, True, 1, "slide_a"))
    with pytest.raises(ValueError):
        select_tiles(10, 0, True, 0, "s")


def test_shard_by_cost_balances_and_covers():
    costs = [100, 90, 10, 10, 10, 5, 80]
    shards = shard_by_cost(costs, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    loads = [sum(costs[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(costs)
    assert shard_by_cost([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert shard_by_cost(costs, 2) == shards  # deterministic


def test_features_equal_model_on_deepzoom_tiles(slide_dir, tmp_path):
    out = tmp_path / "out"
    assert _extract(slide_dir, out) == 0
    extractor = _tiny_extractor()
    for name in ("a.tif", "b.tif"):
        feats = np.load(out / name / "features.npy")
        coords = np.load(out / name / "coords.npy")
        assert feats.dtype == np.float32 and feats.shape == (len(coords), 3 + 32)
        assert len(coords) > 0
        np.testing.assert_array_equal(feats[:, :3], coords.astype(np.float32))
        dz = DeepZoomGenerator(OpenSlide(str(slide_dir / name)), 224, 0)
        tiles = []
        for level, col, row in coords:
            tile = np.asarray(dz.get_tile(int(level), (int(col), int(row))).convert("RGB"))
            padded = np.zeros((224, 224, 3), np.uint8)  # border tiles: zero-padded
            padded[: tile.shape[0], : tile.shape[1]] = tile
            tiles.append(extractor.transform(padded))
        with torch.no_grad():
            expected = extractor(torch.stack(tiles)).numpy()
        np.testing.assert_allclose(feats[:, 3:], expected, atol=1e-5, rtol=1e-4)
        record = json.loads((out / name / "features.json").read_text())
        assert record["extractor"]["weights"] == "random-init"
        assert record["n_tiles"] == len(coords)
    assert (out / "extraction_params.json").is_file()


def test_random_sampling_is_reproducible_and_rerun_skips(slide_dir, tmp_path):
    args = ("n_tiles=5", "random_sampling=true", "seed=3")
    assert _extract(slide_dir, tmp_path / "r1", *args) == 0
    assert _extract(slide_dir, tmp_path / "r2", *args) == 0
    for name in ("a.tif", "b.tif", "c.tif"):
        f1 = np.load(tmp_path / "r1" / name / "features.npy")
        f2 = np.load(tmp_path / "r2" / name / "features.npy")
        assert f1.shape[0] == 5
        np.testing.assert_array_equal(f1, f2)
    mtime = (tmp_path / "r1" / "a.tif" / "features.npy").stat().st_mtime_ns
    assert _extract(slide_dir, tmp_path / "r1", *args) == 0
    assert (tmp_path / "r1" / "a.tif" / "features.npy").stat().st_mtime_ns == mtime


def test_bad_slide_is_reported_and_others_finish(slide_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.tif", "c.tif"):
        shutil.copy(slide_dir / name, mixed / name)
    (mixed / "broken.svs").write_bytes(b"this is not a slide")
    out = tmp_path / "out"
    assert _extract(mixed, out) == 1
    assert (out / "a.tif" / "features.npy").is_file()
    assert (out / "c.tif" / "features.npy").is_file()
    failures = (out / "failures.csv").read_text()
    assert "broken.svs" in failures
    assert "broken.svs" in capsys.readouterr().err


def _cli(slides, out, *extra):
    return [sys.executable, "-m", "rl_benchmarks", "extract-slides", f"slides={slides}",
            f"output_dir={out}", "num_workers=0", "batch_size=4", "progress=false", *TINY, *extra]


def _outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*.npy"))}


@pytest.mark.slow
def test_killed_run_resumes_to_identical_files(slide_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    many = tmp_path / "many"  # enough work that the kill lands mid-run on a fast machine
    many.mkdir()
    for k in range(10):
        for name in ("a.tif", "b.tif", "c.tif"):
            os.link(slide_dir / name, many / f"{k}{name}")
    ref = tmp_path / "ref"
    assert _extract(many, ref, "batch_size=4") == 0  # uninterrupted, in process
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(many, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.glob("*/features.npy")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*/features.npy")))
    assert 0 < done_before < 30, f"{done_before} slides were done when the run was killed"
    subprocess.run(_cli(many, out), check=True, env=env, capture_output=True)
    assert _outputs(out) == _outputs(ref)
    assert _records(out, ref) == _records(ref, ref)
    assert sum(k.endswith("features.json") for k in _records(ref, ref)) == 30
    assert not list(out.glob("*/.rlbench.lock"))  # the killed run's stale locks were taken


def _untimed(obj):
    """``obj`` without timestamp-like keys (at any depth)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items()
                if not any(t in k.lower() for t in ("time", "seconds", "created", "date"))}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _records(root: Path, as_root: Path) -> dict[str, dict]:
    """Every JSON record under ``root`` (paths to ``root`` written as ``as_root``), minus
    timestamps."""
    return {str(p.relative_to(root)): _untimed(json.loads(p.read_text().replace(
                str(root), str(as_root))))
            for p in sorted(root.rglob("*.json"))}


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one(slide_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    assert _extract(slide_dir, one, "batch_size=4") == 0
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", "-m", "rl_benchmarks", "extract-slides",
           *_cli(slide_dir, two)[4:]]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _outputs(two) == _outputs(one)
    assert (two / "failures.csv").is_file()


def test_a_tile_that_cannot_be_read_fails_only_its_slide(slide_dir):
    from rl_benchmarks.extraction.slides import extract_from_coords
    from rl_benchmarks.slides import tile_slide

    good = tile_slide(slide_dir / "a.tif").coords
    bad = good.copy()
    bad[-1, 1] = 10_000  # no such column at that level
    done = {}
    out = extract_from_coords([(slide_dir / "c.tif", bad), (slide_dir / "a.tif", good)],
                              _tiny_extractor(), 224, batch_size=4, progress=False,
                              on_slide_done=lambda i, r: done.__setitem__(i, r))
    assert isinstance(done[0], str) and done[0] and out[0] == done[0]
    assert done[1].shape == (len(good), 35) and out[1] == ""



def test_list_slides_from_csv_keeps_ids_and_resolves_paths(tmp_path):
    """One read of the CSV: relative slide and coords paths resolve against its folder,
    slide ids stay text ("001" is not 1), a missing id or coords falls back."""
    from rl_benchmarks.extraction.slides import list_slides

    (tmp_path / "c").mkdir()
    table = tmp_path / "slides.csv"
    table.write_text("slide_path,slide_id,coords_path\n"
                     "a.svs,001,c/a.npy\n"
                     f"{tmp_path / 'b.tif'},,\n")
    a, b = list_slides(table)
    assert (a.slide_path, a.slide_id, a.coords_path) == (tmp_path / "a.svs", "001",
                                                      tmp_path / "c/a.npy")
    assert (b.slide_path, b.slide_id, b.coords_path) == (tmp_path / "b.tif", "b.tif", None)
    table.write_text("slide_id\nx\n")
    with pytest.raises(ValueError, match="slide_path"):
        list_slides(table)
