"""Shared set-up of the training-stack tests.

* the toy-cohort helpers (tests/val_schemes/cv_testlib.py) become importable;
* torch runs single-threaded in these tests: their matrices are tiny, and OpenMP threads
  spinning on a shared, oversubscribed CPU make tiny matmuls hundreds of times slower.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "val_schemes"))


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
