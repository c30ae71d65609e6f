"""The predictions a CV run writes are read back by the one reader (val_schemes.predictions)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rl_benchmarks.val_schemes.experiment import ExperimentFolder
from rl_benchmarks.val_schemes.predictions import predictions_frame


class _Cohort(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.slide_id)


def _cohort(task: str) -> _Cohort:
    return _Cohort(slide_id=np.array([f"s{i}" for i in range(6)]),
                   patient_id=np.array([f"p{i // 2}" for i in range(6)]), task=task)


@pytest.mark.parametrize("task", ["binary", "survival", "multiclass"])
def test_written_predictions_read_back(tmp_path, task):
    cohort = _cohort(task)
    rng = np.random.default_rng(0)
    folder = ExperimentFolder(tmp_path / "exp")
    written = []
    for k, idx in enumerate([np.array([0, 1, 2]), np.array([3, 4, 5])]):
        if task == "survival":
            labels = np.array([5.0, -3.0, 2.0])  # signed times: negative = censored
            logits = rng.normal(size=(3, 1))
        elif task == "multiclass":
            labels, logits = np.array([0, 1, 2]), rng.normal(size=(3, 3))
        else:
            labels, logits = np.array([0, 1, 1]), rng.normal(size=(3, 1))
        frame = predictions_frame(cohort, idx, labels, logits, f"repeat_1_split_{k + 1}")
        folder.write_predictions(f"repeat_1_split_{k + 1}", frame)
        written.append(frame)
    back = folder.read_predictions()
    assert back.attrs["task"] == task
    assert back["slide_id"].tolist() == [f"s{i}" for i in range(6)]
    assert back["fold"].tolist() == [1, 1, 1, 2, 2, 2] and set(back["repeat"]) == {1}
    scores = [c for c in written[0].columns if c.startswith("score")]
    expected = np.concatenate([w[scores].to_numpy() for w in written])
    np.testing.assert_allclose(back[scores].to_numpy(), expected)
    if task == "survival":
        assert back["time"].tolist()[:3] == [5.0, 3.0, 2.0] and back["event"].tolist()[:3] == [1, 0, 1]
