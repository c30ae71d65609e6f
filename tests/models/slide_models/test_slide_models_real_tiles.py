"""Tier 2: the MIL models on bags of real colorectal tiles (Kather CRC, 9 classes).

There are no foundation-model weights here, so each tile's feature vector is a simple
colour description (per-channel means and standard deviations of a 4x4 grid, 96 values)
of the real pixels. Bags mix tiles of several classes; we check padding invariance,
finiteness, and that Chowder's extreme scores come from real tiles only.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rl_benchmarks.models.slide_models import REFERENCE_MODEL_KWARGS, create_slide_model

pytestmark = pytest.mark.real_data


def _tile_features(path: Path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB").resize((64, 64)), dtype=np.float32) / 255
    cells = img.reshape(4, 16, 4, 16, 3)
    means = cells.mean(axis=(1, 3)).reshape(-1)
    stds = cells.std(axis=(1, 3)).reshape(-1)
    return np.concatenate([means, stds])


@pytest.fixture(scope="module")
def crc_bags(real_data: Path):
    folder = real_data / "tiles" / "crc_he_9class"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder}/labels.csv not found: real CRC tiles missing")
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    feats = np.stack([_tile_features(folder / r["path"]) for r in rows]).astype(np.float32)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    rng = np.random.default_rng(0)
    sizes = [12, 5, 9, 2]
    bags = [feats[rng.choice(len(rows), size=n, replace=False)] for n in sizes]
    n_max = max(sizes)
    x = torch.zeros(len(sizes), n_max, 3 + feats.shape[1])
    mask = torch.ones(len(sizes), n_max, 1, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag), 3:] = torch.from_numpy(bag)
        x[i, len(bag) :, 3:] = 7.0  # conspicuous padding values
        mask[i, : len(bag)] = False
    return x, mask, sizes


@pytest.mark.parametrize("name", sorted(REFERENCE_MODEL_KWARGS))
def test_reference_configs_on_real_tile_bags(crc_bags, name):
    x, mask, sizes = crc_bags
    torch.manual_seed(0)
    model = create_slide_model(name, x.shape[-1] - 3, 2, **REFERENCE_MODEL_KWARGS[name]).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ExtremeLayer")
        out = model(x, mask)
        alone = torch.cat([model(x[i : i + 1, :n]) for i, n in enumerate(sizes)])
    assert out.shape == (len(sizes), 2) and torch.isfinite(out).all()
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)


def test_chowder_extremes_come_from_real_tiles(crc_bags):
    x, mask, sizes = crc_bags
    torch.manual_seed(0)
    model = create_slide_model("chowder", x.shape[-1] - 3, 1, **REFERENCE_MODEL_KWARGS["chowder"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ExtremeLayer")
        scores = model.tile_scores(x, mask)
        extremes = model.extreme_layer(model.score_model(x[..., 3:], mask), mask)
    for i, n in enumerate(sizes):
        real = scores[i, :n]
        assert not torch.isnan(real).any() and torch.isnan(scores[i, n:]).all()
        assert extremes[i, 0, 0] == real.max()
        assert extremes[i, model.n_top, 0] == real.min()
