"""Extraction that can be trusted: skips never stale, zero-tile slides fail, locks between
concurrent runs, bad values refused before any output, the ``weights_path=`` short form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_benchmarks.cli.main import main as cli_main
from rl_benchmarks.cli.main import run
from rl_benchmarks.extraction import locks

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]
QUICK = ["num_workers=0", "batch_size=4", "progress=false"]


def _tiny_ckpt(path: Path, seed: int) -> Path:
    """A tiny iBOT-format checkpoint (ViT 32-d, 1 block, 224 px)."""
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            embed_dim=32, depth=1, num_heads=2)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, path)
    return path


def _pretrained(ckpt: Path) -> list[str]:
    return [f"weights_path={ckpt}", "feature_extractor.architecture=auto",
            "+feature_extractor.num_heads=2"]


@pytest.fixture
def one_slide(slide_dir, tmp_path) -> Path:
    folder = tmp_path / "one"
    folder.mkdir()
    os.link(slide_dir / "a.tif", folder / "a.tif")
    return folder


def _slides(slides, out, *extra):
    return run("extract-slides", [f"slides={slides}", f"output_dir={out}", *QUICK, *extra])


def _npys(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


# ------------------------------------------------------------------ weights_path short form
def test_weights_path_short_form_for_extract_slides_and_tiles(one_slide, tmp_path):
    from rl_benchmarks.utils.io import sha256_file

    ckpt = _tiny_ckpt(tmp_path / "tiny.pth", 0)
    out = tmp_path / "out"
    assert cli_main(["extract-slides", f"slides={one_slide}", f"output_dir={out}", "n_tiles=2",
                     *QUICK, *_pretrained(ckpt)]) == 0
    record = json.loads((out / "a.tif" / "features.json").read_text())
    assert record["extractor"]["weights_sha256"] == sha256_file(ckpt)
    assert record["settings"]["weights_sha256"] == sha256_file(ckpt)
    assert record["extractor"]["weights"] == str(ckpt)
    tiles = tmp_path / "tiles" / "ADI"
    tiles.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.full((224, 224, 3), 200, np.uint8)).save(tiles / "x.png")
    tout = tmp_path / "tout"
    assert cli_main(["extract-tiles", "tile_dataset=image_folder",
                     f"tile_dataset.root={tiles.parent}", f"output_dir={tout}", *QUICK,
                     *_pretrained(ckpt)]) == 0
    trec = json.loads((tout / "rlbenchmarks_extraction_params.json").read_text())
    assert trec["settings"]["weights_sha256"] == sha256_file(ckpt)
    other = _tiny_ckpt(tmp_path / "other.pth", 1)
    assert cli_main(["extract-slides", f"slides={one_slide}", f"output_dir={tmp_path / 'x'}",
                     *QUICK, f"weights_path={ckpt}",
                     f"feature_extractor.weights_path={other}"]) == 2


# ------------------------------------------------------------------ skips are never stale
def test_changed_n_tiles_or_weights_stop_before_work_until_overwrite(one_slide, tmp_path, capsys):
    ckpt = _tiny_ckpt(tmp_path / "w0.pth", 0)
    out = tmp_path / "out"
    assert _slides(one_slide, out, "n_tiles=3", *_pretrained(ckpt)) == 0
    feats = out / "a.tif" / "features.npy"
    first, mtime = np.load(feats), feats.stat().st_mtime_ns
    params = (out / "extraction_params.json").read_text()
    capsys.readouterr()

    assert cli_main(["extract-slides", f"slides={one_slide}", f"output_dir={out}", "n_tiles=2",
                     *QUICK, *_pretrained(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "a.tif" in err and "n_tiles 3 -> 2" in err and "overwrite=true" in err
    assert feats.stat().st_mtime_ns == mtime  # nothing recomputed, nothing rewritten
    assert (out / "extraction_params.json").read_text() == params

    other = _tiny_ckpt(tmp_path / "w1.pth", 1)
    assert cli_main(["extract-slides", f"slides={one_slide}", f"output_dir={out}", "n_tiles=3",
                     *QUICK, *_pretrained(other)]) == 2
    assert "weights_sha256" in capsys.readouterr().err
    assert feats.stat().st_mtime_ns == mtime

    assert _slides(one_slide, out, "n_tiles=2", "overwrite=true", *_pretrained(other)) == 0
    again = np.load(feats)
    assert again.shape[0] == 2 and not np.allclose(again[:, 3:], first[:2, 3:])
    record = json.loads((out / "a.tif" / "features.json").read_text())
    from rl_benchmarks.utils.io import sha256_file

    assert record["settings"]["n_tiles"] == 2 and record["n_tiles"] == 2
    assert record["settings"]["weights_sha256"] == sha256_file(other)
    run_params = json.loads((out / "extraction_params.json").read_text())
    assert run_params["settings"] == record["settings"]
    # Same settings again: skipped, untouched.
    mtime = feats.stat().st_mtime_ns
    assert _slides(one_slide, out, "n_tiles=2", *_pretrained(other)) == 0
    assert feats.stat().st_mtime_ns == mtime


def test_legacy_features_without_record(one_slide, tmp_path, capsys):
    out = tmp_path / "out"
    assert _slides(one_slide, out, "n_tiles=2", *TINY) == 0
    (out / "a.tif" / "features.json").unlink()
    (out / "extraction_params.json").unlink()
    mtime = (out / "a.tif" / "features.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert cli_main(["extract-slides", f"slides={one_slide}", f"output_dir={out}", "n_tiles=2",
                     *QUICK, *TINY]) == 2
    assert "no record of its settings" in capsys.readouterr().err
    assert _slides(one_slide, out, "n_tiles=2", "accept_legacy=true", *TINY) == 0
    assert (out / "a.tif" / "features.npy").stat().st_mtime_ns == mtime
    assert not (out / "a.tif" / "features.json").exists()  # no record invented
    assert json.loads((out / "extraction_params.json").read_text())["legacy_slides"] == ["a.tif"]


# ------------------------------------------------------------------ zero-tile slides
def test_slide_without_tissue_is_a_failure_never_done(one_slide, tmp_path, capsys):
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    write_pyramidal_tiff(one_slide / "tiny.tif", np.full((16, 16, 3), 120, np.uint8), mpp=0.5)
    out = tmp_path / "out"
    assert _slides(one_slide, out, "n_tiles=2", *TINY) == 1
    captured = capsys.readouterr()
    assert "1 slides done" in captured.out and "1 failed" in captured.out
    assert not (out / "tiny.tif" / "features.npy").exists()
    assert (out / "a.tif" / "features.npy").is_file()
    failures = (out / "failures.csv").read_text()
    assert "tiny.tif" in failures and "NoTissue" in failures
    assert "tiny.tif" in captured.err


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("command,arg,key", [
    ("extract-slides", "n_tiles=abc", "n_tiles must be a positive integer or null"),
    ("extract-slides", "n_tiles=-5", "n_tiles must be a positive integer or null, got -5"),
    ("extract-slides", "n_tiles=0", "n_tiles must be a positive integer or null, got 0"),
    ("extract-slides", "batch_size=0", "batch_size must be a positive integer, got 0"),
    ("extract-slides", "batch_size=-4", "batch_size must be a positive integer, got -4"),
    ("extract-tiles", "chunk_size=0", "chunk_size must be a positive integer, got 0"),
    ("extract-tiles", "batch_size=0", "batch_size must be a positive integer, got 0"),
])
def test_bad_values_are_one_line_errors_before_any_output(one_slide, tmp_path, capsys,
                                                           command, arg, key):
    out = tmp_path / "out"
    src = ([f"slides={one_slide}"] if command == "extract-slides" else
           ["tile_dataset=image_folder", f"tile_dataset.root={tmp_path}"])
    args = [command, *src, f"output_dir={out}", "progress=false", "num_workers=0", *TINY]
    assert cli_main([a for a in args if a.split("=")[0] != arg.split("=")[0]] + [arg]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not out.exists()


def test_settings_dataclass_checks_values():
    from rl_benchmarks.extraction.slides import SlideExtractionSettings

    with pytest.raises(ValueError, match="n_tiles must be a positive integer or null, got -5"):
        SlideExtractionSettings(n_tiles=-5)
    with pytest.raises(ValueError, match="min_tissue"):
        SlideExtractionSettings(min_tissue=1.5)
    with pytest.raises(ValueError, match="num_workers"):
        SlideExtractionSettings(num_workers=-1)


# ------------------------------------------------------------------ locks
def test_locks_respect_live_owners_and_take_over_stale_ones(tmp_path):
    path = tmp_path / "item" / ".lock"
    assert locks.try_lock(path) is None  # ours
    assert locks.try_lock(path) is None  # still ours (re-entrant for this pid)
    locks.release(path)
    assert not path.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": sleeper.pid, "host": locks.HOST}))
        owner = locks.try_lock(path)
        assert owner == locks.LockOwner(sleeper.pid, locks.HOST)
        locks.release(path)  # not ours: left alone
        assert path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert locks.try_lock(path) is None  # the owner is dead: stale, taken over
    assert json.loads(path.read_text())["pid"] == os.getpid()
    locks.release(path)
    path.write_text(json.dumps({"pid": 1, "host": locks.HOST + "-elsewhere"}))
    assert locks.try_lock(path) is not None  # another host: cannot tell, respected


def test_a_slide_held_by_a_live_run_is_left_to_it(slide_dir, tmp_path, capsys):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "b.tif").mkdir(parents=True)
        (out / "b.tif" / ".rlbench.lock").write_text(
            json.dumps({"pid": sleeper.pid, "host": locks.HOST}))
        assert _slides(slide_dir, out, "n_tiles=2", *TINY) == 0
        assert "left to another run" in capsys.readouterr().out
        assert not (out / "b.tif" / "features.npy").exists()
        assert (out / "a.tif" / "features.npy").is_file()
        assert not (out / "a.tif" / ".rlbench.lock").exists()  # ours are released
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _slides(slide_dir, out, "n_tiles=2", *TINY) == 0  # stale now: finished
    assert (out / "b.tif" / "features.npy").is_file()


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rl_benchmarks", *args]


@pytest.mark.slow
def test_two_concurrent_slide_runs_share_the_work(slide_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    many = tmp_path / "many"
    many.mkdir()
    for k in range(3):
        for name in ("a.tif", "b.tif", "c.tif"):
            os.link(slide_dir / name, many / f"{k}{name}")
    ref = tmp_path / "ref"
    assert _slides(many, ref, "n_tiles=4", *TINY) == 0
    out = tmp_path / "out"
    args = ["extract-slides", f"slides={many}", f"output_dir={out}", "n_tiles=4", *QUICK, *TINY]
    procs = [subprocess.Popen(_cmd(*args), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert _npys(out) == _npys(ref)  # each slide done once, by one of the runs
    done = [int(r[0].split(" slides done")[0].split()[-1]) for r in results]
    assert sum(done) == 9, [r[0] for r in results]
    assert not list(out.glob("*/.rlbench.lock"))


@pytest.mark.slow
def test_two_concurrent_tile_runs_give_one_runs_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    for cls in ("ADI", "TUM"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / cls / f"{cls}-{i}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def args(out):
        return ["extract-tiles", "tile_dataset=image_folder", f"tile_dataset.root={root}",
                f"output_dir={out}", "chunk_size=2", *QUICK, *TINY]

    ref = tmp_path / "ref"
    assert run(*args(ref)[:1], args(ref)[1:]) == 0
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cmd(*args(out)), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    for name in ("tile_features.npy", "tile_ids.npy"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert not (out / "_chunks").exists() and not (out / ".rlbench.lock").exists()


# ------------------------------------------------------------------ extract-tiles records
class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_extract_tiles_settings_and_old_object_ids(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "tiles" / "ADI"
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"t{i}.png")
    out = tmp_path / "out"
    args = ["extract-tiles", "tile_dataset=image_folder", f"tile_dataset.root={root.parent}",
            f"output_dir={out}", *QUICK, *TINY]
    assert cli_main(args) == 0
    ids = np.load(out / "tile_ids.npy", allow_pickle=False)
    assert ids.dtype.kind == "U" and len(ids) == 3
    feats = (out / "tile_features.npy").read_bytes()
    capsys.readouterr()
    assert cli_main([*args, "seed=1"]) == 2  # other random weights: not the same features
    err = capsys.readouterr().err
    assert "weights_sha256 'random-init:" in err and "overwrite=true" in err
    assert "Traceback" not in err
    assert (out / "tile_features.npy").read_bytes() == feats
    # An old object-array tile_ids.npy carrying a payload: refused on resume, never run.
    marker = tmp_path / "PWNED"
    np.save(out / "tile_ids.npy", np.array([_Payload(marker), "b", "c"], dtype=object),
            allow_pickle=True)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "tile_ids.npy" in err and "refused to unpickle the global" in err
    assert not marker.exists()
    np.save(out / "tile_ids.npy", np.array(list(ids), dtype=object), allow_pickle=True)
    assert cli_main(args) == 0  # a plain older object array: read as data, rewritten as strings
    np.testing.assert_array_equal(np.load(out / "tile_ids.npy", allow_pickle=False), ids)
    assert cli_main([*args, "seed=1", "overwrite=true"]) == 0
    assert (out / "tile_features.npy").read_bytes() != feats
    record = json.loads((out / "rlbenchmarks_extraction_params.json").read_text())
    assert record["config"]["seed"] == 1
    assert cli_main([*args, "seed=1"]) == 0  # same settings: reused
