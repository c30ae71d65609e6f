"""TorchTrainer: per-epoch metrics, drop_last, seeding, gradient accumulation, state save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testlib.cv import ToyCohort, auc, pad_collate
from torch.utils.data import Subset

from rl_benchmarks.models import MeanPool
from rl_benchmarks.trainers import TorchTrainer, slide_level_train_step
from rl_benchmarks.trainers.torch_trainer import resolve_device


def make(seed=None, lr=1e-2, epochs=5, batch=8, model_seed=0, **kw):
    torch.manual_seed(model_seed)
    return TorchTrainer(MeanPool(8, 1), torch.nn.BCEWithLogitsLoss(), {"auc": auc},
                        batch_size=batch, num_epochs=epochs, learning_rate=lr,
                        collator=pad_collate, use_tqdm=False, seed=seed, **kw)


@pytest.fixture(scope="module")
def cohort():
    return ToyCohort(n_patients=30, n_tiles=10, ragged=True)


def test_train_returns_per_epoch_metrics_and_learns(cohort):
    train, val = Subset(cohort, range(0, 30)), Subset(cohort, range(30, len(cohort)))
    trainer = make(seed=1, epochs=6, lr=0.1)
    tr, va = trainer.train(train, val)
    assert set(tr) == set(va) == {"auc", "loss"}
    assert all(len(v) == 6 for v in [*tr.values(), *va.values()])
    assert tr["loss"][-1] < tr["loss"][0]
    assert va["auc"][-1] > 0.9
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    labels, logits = trainer.predict(val)
    assert logits.shape == (len(val), 1)
    assert va["auc"][-1] == pytest.approx(roc := auc(labels, logits))
    assert trainer.evaluate(val)["auc"] == pytest.approx(roc)


def test_drop_last_in_training(cohort):
    seen = []

    def step(model, loader, criterion, optimizer, device, gc_step):
        out = slide_level_train_step(model, loader, criterion, optimizer, device, gc_step)
        seen.append(len(out[1]))
        return out

    trainer = make(seed=0, epochs=2, batch=8, train_step=step)
    train = Subset(cohort, range(21))
    trainer.train(train, None)
    assert seen == [16, 16]  # 21 slides, batch 8: the last 5 are dropped each epoch


def test_same_seed_same_numbers_other_seed_differs(cohort):
    train, val = Subset(cohort, range(30)), Subset(cohort, range(30, len(cohort)))
    a = make(seed=7).train(train, val)[1]["loss"]
    b = make(seed=7).train(train, val)[1]["loss"]
    c = make(seed=8).train(train, val)[1]["loss"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not np.allclose(a, c, atol=1e-6)


def test_gradient_accumulation_matches_one_big_batch(cohort):
    """gc_step=2 with batches of 4 equals one step with a batch of 8 (mean losses)."""
    data = Subset(cohort, range(8))
    acc = make(seed=3, lr=0.1, epochs=1, batch=4, gc_step=2)
    big = make(seed=3, lr=0.1, epochs=1, batch=8)
    acc.train(data, None)
    big.train(data, None)
    for p, q in zip(acc.model.parameters(), big.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_device_auto_and_bad_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(-1).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_state_round_trip(tmp_path, cohort):
    trainer = make(seed=0, epochs=1)
    trainer.train(Subset(cohort, range(16)), None)
    trainer.save(tmp_path / "t.pt")
    back = make(seed=0, epochs=1, model_seed=1).load(tmp_path / "t.pt")
    for p, q in zip(trainer.model.parameters(), back.model.parameters()):
        assert torch.equal(p, q)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0"):
        TorchTrainer(MeanPool(8, 1), torch.nn.BCEWithLogitsLoss(), {}, batch_size=0)
