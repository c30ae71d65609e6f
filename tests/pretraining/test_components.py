"""Masks, schedules, heads, the iBOT loss (against a float64 NumPy reference), the
augmentations and the tile sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rl_benchmarks.pretraining.augment import AugmentConfig, MultiCropAugmentation
from rl_benchmarks.pretraining.data import (
    ImageTiles,
    PretrainDataset,
    RunSampler,
    collate,
    list_images,
    to_rgb,
)
from rl_benchmarks.pretraining.ibot import (
    WeightNormLinear,
    build_ibot_pair,
    cosine_schedule,
    iBOTHead,
    iBOTLoss,
    warmup_then_constant,
)
from rl_benchmarks.pretraining.masking import MaskGenerator, block_mask

# ----------------------------------------------------------------------------- masking


def test_block_mask_exact_count_and_blocky():
    rng = np.random.default_rng(0)
    for n in (0, 3, 20, 59, 98):
        m = block_mask(14, 14, n, rng)
        assert m.shape == (14, 14) and m.dtype == bool and int(m.sum()) == n
    # blocks, not salt-and-pepper: most masked patches have a masked 4-neighbour
    m = block_mask(14, 14, 60, np.random.default_rng(1))
    p = np.pad(m, 1)
    neighbour = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    assert (neighbour & m).sum() / m.sum() > 0.9
    with pytest.raises(ValueError, match="num_masked"):
        block_mask(4, 4, 17, rng)


def test_mask_generator_ratio_and_probability():
    rng = np.random.default_rng(0)
    gen = MaskGenerator(ratio=(0.1, 0.5), probability=1.0)
    ratios = [gen(14, 14, rng).mean() for _ in range(200)]
    assert min(ratios) >= 0.1 - 1 / 196 and max(ratios) <= 0.5 + 1 / 196
    assert np.std(ratios) > 0.05  # drawn, not fixed
    half = MaskGenerator(probability=0.5)
    unmasked = np.mean([not half(14, 14, rng).any() for _ in range(400)])
    assert 0.4 < unmasked < 0.6
    assert not MaskGenerator(probability=0.0)(14, 14, rng).any()
    with pytest.raises(ValueError, match="masking.ratio"):
        MaskGenerator(ratio=(0.6, 0.2))


# ----------------------------------------------------------------------------- schedules


def test_cosine_schedule_matches_formula():
    s = cosine_schedule(1.0, 0.1, total_iters=20, warmup_iters=5, start_warmup=0.0)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    k = np.arange(15)
    np.testing.assert_allclose(s[5:], 0.1 + 0.45 * (1 + np.cos(np.pi * k / 15)))
    t = warmup_then_constant(0.04, 0.07, 3, 5)
    np.testing.assert_allclose(t, [0.04, 0.055, 0.07, 0.07, 0.07])


# ----------------------------------------------------------------------------- heads


def test_weight_norm_linear_and_head_keys():
    layer = WeightNormLinear(6, 4, norm_last_layer=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    v = layer.weight_v.detach().double().numpy()
    g = layer.weight_g.detach().double().numpy()
    expected = x.numpy() @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T
    np.testing.assert_allclose(layer.double()(x).detach().numpy(), expected, rtol=1e-10)
    assert not layer.weight_g.requires_grad  # frozen g (norm_last_layer)

    keys = set(iBOTHead(8, 10, 12, hidden_dim=16, bottleneck_dim=4).state_dict())
    assert keys == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
                    "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v",
                    "last_layer2.weight_g", "last_layer2.weight_v"}
    shared = iBOTHead(8, 10, 10, hidden_dim=16, bottleneck_dim=4, shared_head=True)
    assert not hasattr(shared, "last_layer2")
    y = torch.randn(2, 8)
    torch.testing.assert_close(shared.forward_cls(y), shared.forward_patch(y))
    with pytest.raises(ValueError, match="shared_head"):
        iBOTHead(8, 10, 12, shared_head=True)


def test_student_teacher_pair_structure():
    student, teacher = build_ibot_pair(
        {"arch": "vit_test", "patch_size": 8, "img_size": 32, "drop_path_rate": 0.1},
        {"out_dim": 16, "patch_out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4, "nlayers": 3,
         "shared_head": False, "norm_last_layer": True})
    s_keys, t_keys = set(student.state_dict()), set(teacher.state_dict())
    assert s_keys - t_keys == {"backbone.masked_embed"}
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k])
    assert teacher.backbone.norm.eps == 1e-6
    assert teacher.backbone.blocks[0].attn.qkv.bias is not None


# ----------------------------------------------------------------------------- loss


def _reference_ibot_loss(s_cls, s_patch, t_cls, t_patch, masks, c, c2, tt, tpt, st, n_g, n_l):
    """Straightforward float64 loops over views, images and patches."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def log_softmax(x):
        return np.log(softmax(x))

    def entropy(p):
        return -(p * np.log(p)).sum(-1)

    B = t_cls.shape[0] // n_g
    cls_terms, patch_terms, cls_kl, patch_kl = [], [], [], []
    for q in range(n_g):
        for v in range(n_g + n_l):
            if v == q:
                per_img, per_img_kl = [], []
                for b in range(B):
                    t = softmax((t_patch[q * B + b] - c2) / tpt)
                    s = log_softmax(s_patch[v * B + b] / st)
                    ce = -(t * s).sum(-1)
                    m = masks[v * B + b].reshape(-1).astype(float)
                    per_img.append((ce * m).sum() / max(m.sum(), 1.0))
                    per_img_kl.append(((ce - entropy(t)) * m).sum() / max(m.sum(), 1.0))
                patch_terms.append(np.mean(per_img))
                patch_kl.append(np.mean(per_img_kl))
            else:
                vals, kls = [], []
                for b in range(B):
                    t = softmax((t_cls[q * B + b] - c) / tt)
                    s = log_softmax(s_cls[v * B + b] / st)
                    vals.append(-(t * s).sum())
                    kls.append((t * (np.log(t) - s)).sum())
                cls_terms.append(np.mean(vals))
                cls_kl.append(np.mean(kls))
    return np.mean(cls_terms), np.mean(patch_terms), np.mean(cls_kl), np.mean(patch_kl)


def test_ibot_loss_matches_float64_reference():
    torch.manual_seed(0)
    B, K, Kp, P, n_l = 3, 11, 7, 4, 2
    loss = iBOTLoss(K, Kp, n_global=2, n_local=n_l, epochs=10, warmup_teacher_temp_epochs=4,
                    warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_patch_temp=0.06,
                    warmup_teacher_patch_temp=0.03, lambda_cls=1.0, lambda_patch=0.5)
    loss.center.normal_()
    loss.center2.normal_()
    s_cls, t_cls = torch.randn((2 + n_l) * B, K), torch.randn(2 * B, K)
    s_patch, t_patch = torch.randn(2 * B, P, Kp), torch.randn(2 * B, P, Kp)
    masks = torch.rand(2 * B, 2, 2) > 0.5
    masks[1] = False  # an unmasked image contributes 0 to its view's patch loss
    epoch = 2
    out = loss(s_cls, s_patch, t_cls, t_patch, masks, epoch)
    tt = 0.04 + (0.07 - 0.04) * epoch / 3
    tpt = 0.03 + (0.06 - 0.03) * epoch / 3
    ref_cls, ref_patch, ref_cls_kl, ref_patch_kl = _reference_ibot_loss(
        s_cls.double().numpy(), s_patch.double().numpy(), t_cls.double().numpy(),
        t_patch.double().numpy(), masks.numpy(), loss.center.double().numpy(),
        loss.center2.double().numpy()[0], tt, tpt, 0.1, 2, n_l)
    np.testing.assert_allclose(float(out["cls"]), ref_cls, rtol=1e-5)
    np.testing.assert_allclose(float(out["patch"]), 0.5 * ref_patch, rtol=1e-5)
    np.testing.assert_allclose(float(out["loss"]), ref_cls + 0.5 * ref_patch, rtol=1e-5)
    np.testing.assert_allclose(float(out["cls_kl"]), ref_cls_kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out["patch_kl"]), ref_patch_kl, rtol=1e-4, atol=1e-5)
    assert float(out["cls_kl"]) > 0 and float(out["patch_kl"]) > 0

    # centering: EMA of the batch means, separately for CLS and patch outputs
    c0, c20 = loss.center.clone(), loss.center2.clone()
    loss.update_center(t_cls, t_patch)
    torch.testing.assert_close(loss.center, 0.9 * c0 + 0.1 * t_cls.mean(0, keepdim=True))
    torch.testing.assert_close(loss.center2, 0.9 * c20 + 0.1 * t_patch.mean((0, 1)).view(1, 1, -1))


# ----------------------------------------------------------------------------- augment / data


def test_multicrop_shapes_and_determinism(image_dir):
    aug = MultiCropAugmentation(AugmentConfig(global_size=32, local_size=16, local_number=3))
    tiles = ImageTiles(list_images([image_dir]))
    ds = PretrainDataset(tiles, aug, MaskGenerator(probability=1.0), patch_size=8, seed=3)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(1, 1)]
    assert [tuple(x.shape) for x in a.crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert a.masks.shape == (2, 4, 4) and a.masks.dtype == torch.bool
    for x, y in zip(a.crops, b.crops):
        torch.testing.assert_close(x, y)  # same (seed, epoch, index) -> same views
    torch.testing.assert_close(a.masks, b.masks)
    assert not all(torch.equal(x, y) for x, y in zip(a.crops, c.crops))  # new epoch, new views
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["global"].shape == (6, 3, 32, 32) and batch["local"].shape == (9, 3, 16, 16)
    assert batch["masks"].shape == (6, 4, 4)
    torch.testing.assert_close(batch["global"][4], ds[(0, 1)].crops[1])  # crop-major stacking


def test_rot90_and_flips_only_permute_pixels(image_dir):
    img = Image.open(list_images([image_dir])[0]).convert("RGB")
    cfg = AugmentConfig(global_size=40, local_size=16, local_number=0, global_scale=(1.0, 1.0),
                        jitter_p=0.0, blur_global1=0.0, blur_global2=0.0, solarize_global2=0.0)
    aug = MultiCropAugmentation(cfg)
    torch.manual_seed(0)
    src = np.sort(np.asarray(img).reshape(-1, 3), axis=0)
    for _ in range(5):
        out = aug(img)[0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        out = out + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        pix = np.rint(out.permute(1, 2, 0).numpy() * 255).reshape(-1, 3)
        np.testing.assert_allclose(np.sort(pix, axis=0), src, atol=1)


def test_image_tiles_grid_and_alpha(tmp_path):
    big = np.zeros((50, 70, 3), np.uint8)
    big[:] = (150, 60, 160)
    Image.fromarray(big).save(tmp_path / "big.png")
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent -> white, not black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    tiles = ImageTiles(list_images([tmp_path]), tile_size=20)
    assert len(tiles) == 2 * 3 + 1  # 50x70 -> 2x3 grid; the small image is used whole
    assert tiles[0].size == (20, 20)
    assert np.asarray(to_rgb(Image.open(tmp_path / "clear.png"))).min() == 255
    only_tissue = ImageTiles(list_images([tmp_path]), tile_size=20, min_tissue=0.5)
    assert len(only_tissue) == 6
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_images([tmp_path / "missing"])


def test_image_tiles_cache_only_multi_tile_images(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "a_big.png")
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / f"b_small{k}.png")
    tiles = ImageTiles(list_images([tmp_path]), tile_size=20, cache_images=1)
    assert len(tiles) == 6 + 3
    import rl_benchmarks.pretraining.data as data_mod

    opened = []
    real_open = data_mod.Image.open
    monkeypatch.setattr(data_mod.Image, "open",
                        lambda path, *a, **k: opened.append(Path(path).name) or real_open(path))
    order = [0, 6, 1, 7, 2, 3, 8, 4, 5]  # small images interleaved with the big one's tiles
    got = {i: np.asarray(tiles[i]) for i in order}
    assert opened.count("a_big.png") == 1  # decoded once for its 6 tiles
    for i in range(6):  # the big image's grid, row by row, whatever the cache did
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(got[i], big[20 * r:20 * r + 20, 20 * c:20 * c + 20])
    for k in range(3):
        np.testing.assert_array_equal(
            got[6 + k], np.asarray(Image.open(tmp_path / f"b_small{k}.png")))
    # the single-tile images never entered the one-slot cache: the big image stayed
    assert list(tiles._cache.items) == [0]


def test_run_sampler_resumes_mid_epoch():
    full = list(RunSampler(10, batch_size=2, seed=1, total_steps=12))
    assert len(full) == 24 and {e for e, _ in full} == {0, 1, 2}
    assert sorted(i for e, i in full if e == 0) == sorted(set(i for e, i in full if e == 0))
    resumed = list(RunSampler(10, batch_size=2, seed=1, total_steps=12, start_step=7))
    assert resumed == full[14:]
    r0 = list(RunSampler(10, 2, 1, 4, rank=0, world_size=2))
    r1 = list(RunSampler(10, 2, 1, 4, rank=1, world_size=2))
    assert not {i for e, i in r0 if e == 0} & {i for e, i in r1 if e == 0}  # disjoint shards
