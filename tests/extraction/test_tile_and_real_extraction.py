"""Tile-dataset extraction (tier 1) and real-data extraction (tier 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rl_benchmarks.cli.main import run

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


def _tiny_extractor():
    from rl_benchmarks.models.feature_extractors import create_extractor
    from rl_benchmarks.utils.seed import set_seed

    set_seed(0)
    return create_extractor("iBOTViTBasePANCAN", pretrained=False, depth=1, embed_dim=32,
                            num_heads=2)


def _image_folder(root, sizes=(224, 96)):
    rng = np.random.default_rng(0)
    for cls in ("ADI", "TUM"):
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}-{i}.png")
    return root


def test_extract_tiles_resizes_like_the_reference_and_resumes(tmp_path):
    root = _image_folder(tmp_path / "tiles")
    out = tmp_path / "out"
    args = ["tile_dataset=image_folder", f"tile_dataset.root={root}", f"output_dir={out}",
            "num_workers=0", "batch_size=3", "chunk_size=2", "progress=false", *TINY]
    assert run("extract-tiles", args) == 0
    feats = np.load(out / "tile_features.npy")
    ids = np.load(out / "tile_ids.npy", allow_pickle=False)
    assert feats.shape == (4, 32) and len(ids) == 4 and ids.dtype.kind == "U"
    assert not (out / "_chunks").exists()
    record = json.loads((out / "rlbenchmarks_extraction_params.json").read_text())
    assert record["n_tiles"] == 4
    # Independent computation: PIL resize to 224 (Pillow's default filter), transform, model.
    from rl_benchmarks.datasets import load_image_folder

    frame = load_image_folder(root)
    extractor = _tiny_extractor()
    images = []
    for path in frame["image_path"]:
        img = Image.open(path).convert("RGB")
        if img.size != (224, 224):
            img = img.resize((224, 224))
        images.append(extractor.transform(img))
    with torch.no_grad():
        expected = extractor(torch.stack(images)).numpy()
    assert list(ids) == list(frame["image_id"])
    np.testing.assert_allclose(feats, expected, atol=1e-5, rtol=1e-4)
    # Resume: with the final files present the run is a no-op; with chunks only it reuses them.
    (out / "tile_features.npy").unlink()
    assert run("extract-tiles", args) == 0
    np.testing.assert_allclose(np.load(out / "tile_features.npy"), feats, atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.real_data
def test_cmu_small_region_with_random_ibot_checkpoint(real_data, tmp_path):
    """iBOTViTBasePANCAN from a random checkpoint in the iBOT format gives (n, 771)."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    sd = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    ckpt = tmp_path / "ibot_vit_base_pancan.pth"
    torch.save({"teacher": sd, "student": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    del vit, sd
    out = tmp_path / "out"
    slide = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    code = run("extract-slides", [f"slides={slide}", f"output_dir={out}", "num_workers=0",
                                  "n_tiles=4", "random_sampling=true", "batch_size=4",
                                  "progress=false", f"feature_extractor.weights_path={ckpt}"])
    assert code == 0
    feats = np.load(out / slide.name / "features.npy")
    assert feats.shape == (4, 771) and feats.dtype == np.float32
    coords = np.load(out / slide.name / "coords.npy")
    assert len(coords) > 4  # tissue was found and tiled on the fly at 0.5 mpp
    record = json.loads((out / slide.name / "features.json").read_text())
    assert record["extractor"]["weights_sha256"] not in ("", "random-init")


@pytest.mark.real_data
def test_crc_tiles_as_image_folder(real_data, tmp_path):
    root = real_data / "tiles" / "crc_he_9class"
    out = tmp_path / "out"
    code = run("extract-tiles", ["tile_dataset=image_folder", f"tile_dataset.root={root}",
                                 f"output_dir={out}", "num_workers=2", "batch_size=16",
                                 "progress=false", *TINY])
    assert code == 0
    feats = np.load(out / "tile_features.npy")
    ids = np.load(out / "tile_ids.npy", allow_pickle=False)
    labels = pd.read_csv(root / "labels.csv")
    assert feats.shape == (len(labels), 32) and len(ids) == len(labels)
    assert np.isfinite(feats).all()


def test_extract_tiles_reuses_finished_chunks(tmp_path):
    from rl_benchmarks.datasets import load_image_folder
    from rl_benchmarks.extraction.tiles import extract_tile_dataset, tile_settings
    from rl_benchmarks.utils.io import write_json

    frame = load_image_folder(_image_folder(tmp_path / "tiles"))
    extractor = _tiny_extractor()
    full = extract_tile_dataset(frame, tmp_path / "full", extractor, batch_size=3,
                                num_workers=0, chunk_size=2, progress=False)
    assert full.n_chunks_done == 2
    expected = np.load(tmp_path / "full" / "tile_features.npy")
    out = tmp_path / "resumed"
    (out / "_chunks").mkdir(parents=True)
    sentinel = np.full((2, 32), 7.0, np.float32)  # a chunk "finished" before a crash
    np.save(out / "_chunks" / "chunk_000001.npy", sentinel)
    write_json(out / "_chunks" / "settings.json",  # what the crashed run was doing
               {**tile_settings(frame, extractor), "chunk_size": 2})
    summary = extract_tile_dataset(frame, out, extractor, batch_size=3, num_workers=0,
                                   chunk_size=2, progress=False)
    assert (summary.n_chunks_done, summary.n_chunks_skipped) == (1, 1)
    feats = np.load(out / "tile_features.npy")
    np.testing.assert_array_equal(feats[2:], sentinel)  # reused, not recomputed
    np.testing.assert_allclose(feats[:2], expected[:2], atol=1e-5, rtol=1e-4)
