"""The collapse monitor: its statistics, and that logging it leaves training unchanged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from testlib.pretrain import tiny_config

from rl_benchmarks.pretraining.ibot import build_ibot_pair
from rl_benchmarks.pretraining.monitor import MONITOR_KEYS, collapse_stats, effective_rank
from rl_benchmarks.pretraining.train import make_config, train


def test_effective_rank_counts_directions():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(400, 8, generator=g, dtype=torch.float64)
    assert 7.0 < effective_rank(iso) <= 8.0
    rank1 = torch.randn(50, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert effective_rank(rank1) < 1.01
    assert effective_rank(torch.ones(5, 3)) == 1.0  # constant rows: nothing left after centring


def _pair():
    cfg = make_config(tiny_config("/tmp/unused", "/tmp/unused"))
    torch.manual_seed(0)
    return build_ibot_pair(cfg["model"], cfg["head"])


def test_collapse_stats_separate_constant_from_varied_inputs():
    _, teacher = _pair()
    teacher.train()
    varied = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    same = varied[:1].repeat(24, 1, 1, 1)
    a, b = collapse_stats(teacher, varied), collapse_stats(teacher, same)
    assert set(a) == set(MONITOR_KEYS)
    assert teacher.training  # the train/eval mode is restored
    # identical inputs: no spread, rank 1, and the mean output is as sharp as each output
    assert b["feat_std"] < 1e-4 and b["feat_rank"] == 1.0
    assert abs(b["h_mean"] - b["h_image"]) < 1e-4
    assert a["feat_std"] > 100 * max(b["feat_std"], 1e-7) and a["feat_rank"] > 2
    assert a["h_mean"] > a["h_image"] + 1e-3  # different images prefer different prototypes
    k = teacher.head.last_layer.weight_v.shape[0]
    assert 0 < a["h_image"] < a["h_mean"] <= math.log(k) + 1e-6
    # a center equal to the output itself makes every image uniform (uniform collapse)
    with torch.no_grad():
        from rl_benchmarks.pretraining.ibot import vit_tokens

        teacher.eval()
        out = teacher.head.forward_cls(vit_tokens(teacher.backbone, same[:1])[:, 0])
    c = collapse_stats(teacher, same, center=out)
    assert abs(c["h_image"] - math.log(k)) < 1e-3


def test_monitor_is_logged_and_does_not_change_training(tmp_path, image_dir):
    common = dict(max_steps=3, export={"teacher": False})
    plain = train(tiny_config(tmp_path / "a", image_dir, **common))
    watched = train(tiny_config(tmp_path / "b", image_dir, monitor={"every_steps": 2, "tiles": 6},
                                **common))
    assert plain["step"] == watched["step"] == 3
    a = pd.read_csv(tmp_path / "a" / "train_log.csv")
    b = pd.read_csv(tmp_path / "b" / "train_log.csv")
    np.testing.assert_allclose(b["loss"].to_numpy(), a["loss"].to_numpy(), rtol=1e-6, atol=1e-7)
    assert "feat_rank" not in a.columns
    logged = b.dropna(subset=["feat_rank"])
    assert list(logged["step"]) == [0, 2]  # before steps 0 and 2
    for key in MONITOR_KEYS:
        assert np.isfinite(logged[key]).all()
        assert np.isfinite(b[f"{key}_end"].dropna()).all() and b[f"{key}_end"].notna().sum() == 1


def test_koleo_prefers_spread_features():
    from rl_benchmarks.pretraining.ibot import koleo_loss

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(32, 16, generator=g)
    clustered = torch.randn(1, 16, generator=g) + 0.01 * torch.randn(32, 16, generator=g)
    assert koleo_loss(spread) < koleo_loss(clustered) - 2.0
    x = clustered.clone().requires_grad_(True)
    koleo_loss(x, n_chunks=2).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_koleo_weight_adds_the_term_to_the_loss(tmp_path, image_dir):
    from rl_benchmarks.pretraining.data import collate
    from rl_benchmarks.pretraining.train import Trainer

    rows = []
    for w in (0.0, 0.5):
        over = tiny_config(tmp_path / f"k{w}", image_dir, loss={"koleo_weight": w})
        tr = Trainer(make_config(over))
        batch = collate([tr.dataset[(0, i)] for i in range(tr.batch_size)])
        rows.append(tr.train_step(batch))
    assert "koleo" not in rows[0] and np.isfinite(rows[1]["koleo"])
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"] + 0.5 * rows[1]["koleo"], rel=1e-5)
