"""What reaches the model in ``extract-slides``: with ``stain_norm=macenko
stain_norm.target=<image>`` tiles are normalised on the extraction device before the model,
the fitted target is part of the recorded settings, and a bad target is a one-line error
before any output is written; ``inference_path=`` picks the CPU inference path (recorded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rl_benchmarks.cli.main import main, run
from rl_benchmarks.extraction.slides import StaleOutputError, features_of_uint8
from rl_benchmarks.slides import stain


def _target(path, seed=0):
    rng = np.random.default_rng(seed)
    od = rng.gamma(2.0, 0.3, size=(64, 64, 2)) @ np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    Image.fromarray(np.clip(240 * np.exp(-od) - 1, 0, 255).astype(np.uint8)).save(path)
    return path


def _extract(slides, out, tiny, *extra):
    return run("extract-slides", [f"slides={slides}", f"output_dir={out}", "num_workers=0",
                                  "batch_size=8", "progress=false", *tiny, *extra])


@pytest.mark.slow
def test_stain_normalised_features_are_recorded_and_differ(slide_dir, tiny, tmp_path):
    target = _target(tmp_path / "target.png")
    plain, normed = tmp_path / "plain", tmp_path / "normed"
    assert _extract(slide_dir, plain, tiny) == 0
    assert _extract(slide_dir, normed, tiny, "stain_norm=macenko", f"stain_norm.target={target}") == 0
    rec = json.loads((normed / "a.tif" / "features.json").read_text())["settings"]["stain_norm"]
    assert rec["method"] == "macenko" and rec["target"] == str(target)
    assert "stain_norm" not in json.loads((plain / "a.tif" / "features.json").read_text())["settings"]
    a, b = np.load(plain / "a.tif" / "features.npy"), np.load(normed / "a.tif" / "features.npy")
    np.testing.assert_array_equal(a[:, :3], b[:, :3])  # same tiles
    assert not np.allclose(a[:, 3:], b[:, 3:])  # other pixels reached the model
    # another target is another setting: the finished slides are not silently reused
    other = _target(tmp_path / "other.png", seed=3)
    with pytest.raises(StaleOutputError, match=r"stain_norm\.target '.*target\.png' -> '.*other\.png'"):
        _extract(slide_dir, normed, tiny, "stain_norm=macenko", f"stain_norm.target={other}")


def test_features_of_uint8_normalises_before_the_model() -> None:
    class Echo:
        device = torch.device("cpu")

        def normalize_uint8(self, x, channels_last=True):
            return x.permute(0, 3, 1, 2).float()

        def __call__(self, x):
            return x.flatten(1)

    tiles = torch.from_numpy(np.array(Image.new("RGB", (8, 8), (200, 120, 170))))[None].repeat(2, 1, 1, 1)
    norm = stain.StainNormalizer(stain.fit_target("reinhard", np.asarray(tiles[0]) // 2 + 60))
    got = features_of_uint8(Echo(), tiles, norm)
    want = norm(tiles).permute(0, 3, 1, 2).float().flatten(1).numpy()
    np.testing.assert_array_equal(got, want)


def test_target_without_tissue_is_one_line_before_any_output(slide_dir, tiny, tmp_path, capsys):
    white = tmp_path / "white.png"
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(white)
    out = tmp_path / "x"
    code = main(["extract-slides", f"slides={slide_dir}", f"output_dir={out}", "num_workers=0",
                 "progress=false", *tiny, "stain_norm=macenko", f"stain_norm.target={white}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "white.png: no tissue" in err[0]
    assert not (out / "a.tif").exists()
    code = main(["extract-slides", f"slides={slide_dir}", f"output_dir={out}", *tiny, "stain_norm=macenko"])
    assert code == 2 and "stain_norm.target" in capsys.readouterr().err


def test_inference_path_key_reaches_the_extractor(slide_dir, tiny, tmp_path):
    # extract-slides inference_path=plain|auto: the record says which path ran, and the fp32
    # fast path (the CPU default) gives the plain path's features within float rounding
    feats, paths = {}, {}
    for mode in ("plain", "auto"):
        out = tmp_path / mode
        assert _extract(slide_dir, out, tiny, f"inference_path={mode}") == 0
        paths[mode] = json.loads((out / "a.tif" / "features.json").read_text())
        feats[mode] = np.load(out / "a.tif" / "features.npy")
    assert '"inference_path": "plain"' in json.dumps(paths["plain"])
    assert '"inference_path": "fast"' in json.dumps(paths["auto"])
    np.testing.assert_allclose(feats["auto"], feats["plain"], atol=1e-5, rtol=1e-5)
    # a bad value is refused with the configuration, before any extractor or output
    with pytest.raises(ValueError, match="^inference_path must be one of auto, fast, plain, "
                                         "got 'turbo'$"):
        _extract(slide_dir, tmp_path / "bad", tiny, "inference_path=turbo")
    assert not (tmp_path / "bad").exists()
