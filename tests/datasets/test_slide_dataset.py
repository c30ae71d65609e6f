"""Per-item memory-mapped reads, seeded tile sampling, the padded fast path, collation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rl_benchmarks.datasets import SlideClassificationDataset, SlideFeaturesDataset
from rl_benchmarks.utils.features import pad_collate_fn, preload_features


@pytest.fixture
def cohort(tmp_path, ref):
    root = tmp_path / "feats"
    sizes = [30, 8, 50, 12]
    for i, n in enumerate(sizes):
        ref.write_features(root / f"slide{i}.svs", n, seed=i)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"slide_id": [f"slide{i}" for i in range(4)], "label": [0, 1, 0, 1]}).to_csv(csv, index=False)
    return root, str(csv), sizes


def rows_as_set(a: np.ndarray) -> set:
    return {tuple(r) for r in np.asarray(a, dtype=np.float32).tolist()}


def test_items_sample_real_rows_without_replacement(cohort):
    root, csv, sizes = cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=10, seed=3)
    assert ds.n_tiles_per_slide.tolist() == sizes
    for i in range(4):
        x, y = ds[i]
        full = np.load(root / f"slide{i}.svs" / "features.npy")
        assert x.shape == (min(10, sizes[i]), 11) and x.dtype == torch.float32
        got = rows_as_set(x.numpy())
        assert len(got) == x.shape[0] and got <= rows_as_set(full)
        assert y.shape == (1,)


def test_sampling_is_seeded_and_reproducible(cohort):
    root, csv, _ = cohort
    a = SlideClassificationDataset(root, csv, n_tiles=10, seed=1)
    b = SlideClassificationDataset(root, csv, n_tiles=10, seed=1)
    c = SlideClassificationDataset(root, csv, n_tiles=10, seed=2)
    # same seed -> same draws whatever the order of reads
    first_a = [a[i][0] for i in (0, 1, 2, 3)]
    first_b = [b[i][0] for i in (3, 2, 1, 0)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first_a, first_b))
    assert not torch.equal(first_a[2], c[2][0])
    # the next read of a slide draws another sample; set_epoch restarts the sequence
    again = a[2][0]
    assert not torch.equal(again, first_a[2])
    a.set_epoch(0)
    assert torch.equal(a[2][0], first_a[2])
    a.set_epoch(1)
    assert not torch.equal(a[2][0], first_a[2])


def test_no_shuffle_takes_first_rows_and_none_takes_all(cohort):
    root, csv, sizes = cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=10, shuffle=False)
    full = np.load(root / "slide2.svs" / "features.npy")
    np.testing.assert_array_equal(ds[2][0].numpy(), full[:10])
    ds = SlideClassificationDataset(root, csv, n_tiles=None, shuffle=False)
    np.testing.assert_array_equal(ds[2][0].numpy(), full)


def test_features_are_read_per_item_not_preloaded(cohort):
    root, csv, _ = cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=None, shuffle=False)
    path = root / "slide1.svs" / "features.npy"
    arr = np.load(path)
    arr[:, 3:] = 7.0
    np.save(path, arr)  # same shape, new content: a preloading dataset would not see it
    assert torch.all(ds[1][0][:, 3:] == 7.0)


def test_n_tiles_from_the_task_config_reaches_the_dataset(cohort):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rl_benchmarks.cli.main import CONF_ROOT

    root, csv, _ = cohort
    task = OmegaConf.load(CONF_ROOT / "slide_level_task/cross_validation/task/tcga_crc_msi_prediction.yaml")
    cfg = OmegaConf.create({"task": task})
    cfg.task.data.n_tiles = 7
    cfg.task.data.train.cohort = csv
    cfg.task.data.train.label = None
    ds = instantiate(cfg.task.data.train, features_root_dir=str(root))
    assert ds.n_tiles == 7 and ds[0][0].shape[0] == 7


def test_as_tensor_matches_items_and_masks_padding(cohort):
    root, csv, sizes = cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=20, seed=5)
    batch = ds.as_tensor()
    assert batch.features.shape == (4, 20, 11) and batch.mask.shape == (4, 20, 1)
    assert (~batch.mask).sum(dim=(1, 2)).tolist() == [min(20, n) for n in sizes]
    assert batch.labels.tolist() == [[0.0], [1.0], [0.0], [1.0]]
    for i in range(4):
        full = np.load(root / f"slide{i}.svs" / "features.npy")
        idx = ds.sample_indices(i, 20, key="as_tensor")
        expected = full if idx is None else full[idx]
        n = len(expected)
        np.testing.assert_array_equal(batch.features[i, :n].numpy(), expected)
        assert torch.all(batch.features[i, n:] == 0)
    half = ds.as_tensor(dtype=torch.float16, drop_metadata=True, indices=[1, 3])
    assert half.features.dtype == torch.float16 and half.features.shape == (2, 12, 8)
    assert ds.tensor_nbytes(dtype=torch.float16, indices=[1, 3], drop_metadata=True) == 2 * 12 * 8 * 2
    torch.testing.assert_close(half.features.float(), batch.features[[1, 3], :12, 3:], atol=1e-2, rtol=1e-2)
    assert torch.equal(ds.as_padded_tensor().features, batch.features)  # same fixed draw
    with pytest.raises(MemoryError, match="as_tensor needs"):
        ds.as_tensor(max_bytes=100)


def test_base_dataset_from_arrays():
    arrays = [np.arange(5 * 6, dtype=np.float64).reshape(5, 6), np.ones((2, 6))]
    ds = SlideFeaturesDataset(arrays, [1.0, 0.0], n_tiles=3, shuffle=False)
    assert ds.n_features == 3 and len(ds) == 2
    np.testing.assert_array_equal(ds[0][0].numpy(), arrays[0][:3])
    with pytest.raises(ValueError, match="2 feature matrices but 1 labels"):
        SlideFeaturesDataset(arrays, [1.0])


def test_pad_collate_fn_against_manual_padding():
    items = [(torch.randn(n, 5), torch.tensor([float(n)])) for n in (3, 1, 4)]
    feats, mask, labels = pad_collate_fn(items)
    assert feats.shape == (3, 4, 5) and mask.shape == (3, 4, 1) and labels.shape == (3, 1)
    for b, (x, _) in enumerate(items):
        n = x.shape[0]
        assert torch.equal(feats[b, :n], x) and torch.all(feats[b, n:] == 0)
        assert mask[b, :, 0].tolist() == [False] * n + [True] * (4 - n)
    assert labels[:, 0].tolist() == [3.0, 1.0, 4.0]
    feats, mask, _ = pad_collate_fn(items, batch_first=False, max_len=6)
    assert feats.shape == (6, 3, 5) and mask.shape == (6, 3, 1)
    with pytest.raises(ValueError, match="max_len=2"):
        pad_collate_fn(items, max_len=2)


def test_dataloader_with_pad_collate(cohort):
    root, csv, _ = cohort
    ds = SlideClassificationDataset(root, csv, n_tiles=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=pad_collate_fn)
    feats, mask, labels = next(iter(loader))
    assert feats.shape == (4, 10, 11) and (~mask).sum().item() == 10 + 8 + 10 + 10
    assert labels.shape == (4, 1)


def test_preload_features(cohort):
    root, _, _ = cohort
    paths = [root / f"slide{i}.svs" / "features.npy" for i in range(2)]
    out = preload_features(paths, n_tiles=10)
    np.testing.assert_array_equal(out[0], np.load(paths[0])[:10])
    assert out[1].shape == (8, 11) and not isinstance(out[0], np.memmap)
    shuffled = preload_features(paths, n_tiles=10, shuffle=True, seed=1)
    assert rows_as_set(shuffled[0]) <= rows_as_set(np.load(paths[0]))
