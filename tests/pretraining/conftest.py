"""Tiny iBOT set-ups: a 2-block ViT with 8-px patches on 32/16-px crops of small images."""

from __future__ import annotations

import pytest
from testlib.pretrain import write_tiny_images


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> str:
    """Eight 40x40 H&E-ish images (pink/purple noise)."""
    return write_tiny_images(tmp_path_factory.mktemp("imgs"))
