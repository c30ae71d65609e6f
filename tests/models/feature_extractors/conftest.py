"""Fixtures of the feature-extractor tests."""

from __future__ import annotations

import os

import pytest
from testlib.extractors import IbotCkpt, write_ibot_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ibot_ckpt(tmp_path_factory) -> IbotCkpt:
    return write_ibot_checkpoint(tmp_path_factory.mktemp("ibot") / "ibot_tiny.pth")
