"""No pickle is written by the package: trainer state files are torch state dicts loaded with
``weights_only=True``; the package's sources call no pickle writer or unrestricted reader."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from rl_benchmarks.models import MeanPool
from rl_benchmarks.trainers import BaseTrainer, TorchTrainer

PACKAGE = Path(__file__).resolve().parents[2] / "rl_benchmarks"


def _trainer(seed: int) -> TorchTrainer:
    torch.manual_seed(seed)
    return TorchTrainer(MeanPool(4, 1), torch.nn.BCEWithLogitsLoss(), {}, batch_size=2,
                        num_epochs=1, use_tqdm=False)


def test_trainer_save_load_state_dicts(tmp_path):
    trainer = _trainer(0)
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=0.1)
    x = torch.randn(2, 5, 7)
    trainer.optimizer.zero_grad()
    trainer.model(x, None).sum().backward()
    trainer.optimizer.step()  # an optimizer state worth saving
    trainer.save(tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)  # plain tensors only
    assert set(state) == {"model", "criterion", "optimizer"}

    other = _trainer(1)
    assert not all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(),
                                                       other.model.parameters()))
    other.optimizer = torch.optim.Adam(other.model.parameters(), lr=0.1)
    assert other.load(tmp_path / "t.pt") is other
    for p, q in zip(trainer.model.parameters(), other.model.parameters()):
        assert torch.equal(p, q)
    assert other.optimizer.state_dict()["state"][0]["step"] == 1
    # an optimizer not built yet is skipped, the model is still loaded
    fresh = _trainer(2)
    fresh.load(tmp_path / "t.pt")
    assert fresh.optimizer is None
    for p, q in zip(trainer.model.parameters(), fresh.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_trainer_load_refuses_pickled_trainer_and_class_call(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match=r"evil\.pkl: not a trainer state file"):
        _trainer(0).load(tmp_path / "evil.pkl")
    assert not marker.exists()
    with pytest.raises(TypeError, match="build the trainer .* then call trainer.load"):
        BaseTrainer.load(tmp_path / "evil.pkl")


def test_package_writes_no_pickle():
    """No ``pickle.dump``/``pickle.load`` and no ``allow_pickle=True`` writer in the package:
    the only unpickling is the restricted reader of reference run folders and the
    reference's NCT-CRC label dict (datasets/, owned elsewhere)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"pickle\.dumps?\(", r"save_pickle", r"torch\.save\(self\s*[,)]"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert not offenders, offenders
