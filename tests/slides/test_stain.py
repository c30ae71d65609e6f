"""Stain normalisation and jitter against independent float64 references: torchstain's
numpy Macenko and scikit-image's colour conversions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from rl_benchmarks.slides import stain

CRC = "tiles/crc_he_9class"


def _tile(root: Path, name: str) -> np.ndarray:
    folder = root / CRC / name
    path = sorted(p for p in folder.iterdir() if p.suffix in (".tif", ".png"))[0]
    return np.asarray(Image.open(path).convert("RGB"))


def _synthetic(seed: int, size: int = 64) -> np.ndarray:
    """An H&E-like image: haematoxylin and eosin concentrations mixed through Ruifrok's vectors."""
    rng = np.random.default_rng(seed)
    he = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    conc = rng.gamma(2.0, 0.3, size=(size * size, 2)) * rng.uniform(0.5, 1.5, size=2)
    od = conc @ he + rng.normal(0, 0.01, size=(size * size, 3))
    rgb = 240 * np.exp(-od) - 1
    return np.clip(rgb, 0, 255).astype(np.uint8).reshape(size, size, 3)


def _torchstain_macenko(target: np.ndarray, image: np.ndarray) -> np.ndarray:
    ts = pytest.importorskip("torchstain")
    norm = ts.normalizers.MacenkoNormalizer(backend="numpy")
    norm.fit(target)
    out, _, _ = norm.normalize(I=image, stains=False)
    return out


def test_macenko_matches_torchstain_on_real_tiles(real_data: Path) -> None:
    target, image = _tile(real_data, "TUM"), _tile(real_data, "STR")
    ours = stain.normalize(image.astype(np.float64), stain.fit_target("macenko", target)).numpy()
    ref = _torchstain_macenko(target, image)
    # torchstain truncates to uint8; ours is the unrounded float64 image
    assert np.abs(np.floor(ours) - ref).max() <= 1
    assert np.abs(ours - ref).mean() < 1.0


def test_macenko_matches_torchstain_on_synthetic_he() -> None:
    target, image = _synthetic(0), _synthetic(1)
    ours = stain.normalize(image.astype(np.float64), stain.fit_target("macenko", target)).numpy()
    assert np.abs(np.floor(ours) - _torchstain_macenko(target, image)).max() <= 1


def test_batched_equals_one_by_one_and_uint8_is_the_rounded_float() -> None:
    target = stain.fit_target("macenko", _synthetic(0))
    tiles = np.stack([_synthetic(s) for s in (1, 2, 3)])
    batch = stain.normalize(torch.from_numpy(tiles).double(), target)
    for i in range(3):
        one = stain.normalize(torch.from_numpy(tiles[i]).double(), target)
        assert torch.allclose(batch[i], one, atol=1e-9)
    as_uint8 = stain.normalize(torch.from_numpy(tiles), target)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == tiles.shape
    assert (as_uint8.double() - batch.clamp(0, 255).round()).abs().max() <= 1


def test_normalising_an_image_to_itself_changes_it_little() -> None:
    image = _synthetic(4)
    for method in stain.METHODS:
        out = stain.normalize(image.astype(np.float64), stain.fit_target(method, image)).numpy()
        assert np.abs(out - image).mean() < 2.0, method


def test_tiles_without_tissue_are_left_unchanged() -> None:
    target = stain.fit_target("macenko", _synthetic(0))
    glass = np.full((2, 16, 16, 3), 245, dtype=np.uint8)
    assert torch.equal(stain.normalize(torch.from_numpy(glass), target), torch.from_numpy(glass))


def test_target_without_tissue_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "white.png"
    Image.fromarray(np.full((32, 32, 3), 250, dtype=np.uint8)).save(path)
    with pytest.raises(stain.StainTargetError, match=r"white\.png: no tissue"):
        stain.fit_target("macenko", path)
    with pytest.raises(stain.StainTargetError, match="no such file"):
        stain.fit_target("macenko", tmp_path / "missing.png")
    with pytest.raises(ValueError, match="unknown method"):
        stain.fit_target("vahadane", path)


def test_lab_conversions_equal_scikit_image() -> None:
    rgb = np.random.default_rng(0).uniform(0, 1, size=(500, 3))
    lab = stain.rgb_to_lab(torch.from_numpy(rgb)).numpy()
    np.testing.assert_allclose(lab, color.rgb2lab(rgb), atol=1e-8)
    back = stain.lab_to_rgb(torch.from_numpy(lab)).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-6)


def test_reinhard_equals_a_float64_reference_with_scikit_image() -> None:
    target, image = _synthetic(0), _synthetic(5)
    t_lab = color.rgb2lab(target / 255).reshape(-1, 3)
    i_lab = color.rgb2lab(image / 255)
    ref_lab = (i_lab - i_lab.reshape(-1, 3).mean(0)) / i_lab.reshape(-1, 3).std(0) * t_lab.std(0) + t_lab.mean(0)
    ref = np.clip(color.lab2rgb(ref_lab), 0, 1) * 255
    ours = stain.normalize(image.astype(np.float64), stain.fit_target("reinhard", target)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_hed_jitter_equals_scikit_image_with_the_same_draws() -> None:
    rgb = _synthetic(6, size=16).astype(np.float64) / 255
    alpha, beta = torch.tensor([[1.04, 0.97, 1.01]]), torch.tensor([[0.02, -0.01, 0.0]])
    ours = stain.stain_jitter(torch.from_numpy(rgb).permute(2, 0, 1), alpha=alpha, beta=beta)
    hed = color.rgb2hed(rgb) * alpha.numpy()[0] + beta.numpy()[0] / -np.log(1e-6)  # beta in OD units
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), color.hed2rgb(hed), atol=1e-6)
    # zero jitter is scikit-image's HED round trip (negative stain amounts clipped to 0)
    same = stain.stain_jitter(torch.from_numpy(rgb).permute(2, 0, 1), alpha=torch.ones(1, 3),
                              beta=torch.zeros(1, 3))
    np.testing.assert_allclose(same.permute(1, 2, 0).numpy(), color.hed2rgb(color.rgb2hed(rgb)), atol=1e-6)
    assert np.abs(same.permute(1, 2, 0).numpy() - rgb).mean() < 2e-3


def test_record_names_the_target(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.fromarray(_synthetic(0)).save(path)
    rec = stain.fit_target("macenko", path).record()
    assert rec["method"] == "macenko" and rec["target"] == str(path) and len(rec["target_sha256"]) == 64
    assert np.asarray(rec["stain_matrix"]).shape == (3, 2)


def test_training_transforms_apply_stain_jitter_only_when_asked() -> None:
    from rl_benchmarks.evaluation.finetune import make_transforms
    from rl_benchmarks.pretraining.augment import AugmentConfig, MultiCropAugmentation

    def jitters(tf) -> bool:
        return any(isinstance(t, stain.RandomStainJitter) for t in tf.transforms)

    assert jitters(make_transforms(32, train=True, stain_jitter=0.05))
    assert not jitters(make_transforms(32, train=True))
    assert not jitters(make_transforms(32, train=False, stain_jitter=0.05))
    aug = MultiCropAugmentation(AugmentConfig(global_size=32, local_size=16, local_number=1,
                                              stain_jitter=0.05, stain_jitter_p=1.0))
    assert jitters(aug.global1.transforms[-1]) and jitters(aug.local.transforms[-1])
    assert not jitters(MultiCropAugmentation(AugmentConfig(global_size=32, local_size=16)).global1.transforms[-1])


def test_stain_jitter_changes_colour_within_its_strength() -> None:
    img = torch.from_numpy(_synthetic(7, size=32)).permute(2, 0, 1).double() / 255
    out = stain.RandomStainJitter(sigma=0.1, p=1.0)(img)
    assert out.shape == img.shape and not torch.equal(out, img)
    assert float((out - img).abs().mean()) < 0.2
    assert stain.RandomStainJitter(sigma=0.1, p=0.0)(img) is img
