"""docs/extractors.md's Hugging Face snippet runs as shown, on a tiny export (issue S).

The block needs an owkin/phikon folder and a tile, so tests/docs/test_docs_blocks.py does not
run it ("needs reference data"). Here it runs unchanged in a folder holding ``phikon_hf``
(``rlbench export-hf`` of a tiny ``rlbench pretrain``-style checkpoint of a non-standard
width) and ``tile.png``, and its claim holds: the features equal ``iBOTViT``'s on the same
image (max abs diff <= 1e-4).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

DOC = Path(__file__).resolve().parents[2] / "docs" / "extractors.md"


def _python_block(needle: str) -> str:
    """The fenced python block of docs/extractors.md that contains ``needle``."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"),
                        flags=re.S | re.M)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"{DOC}: expected one python block with {needle!r}"
    return found[0]


def test_hf_snippet_runs_and_matches_ibotvit(tmp_path, monkeypatch):
    from rl_benchmarks.models.feature_extractors.hf import export_hf
    from rl_benchmarks.models.feature_extractors.ibot_vit import build_vit, iBOTViT
    from rl_benchmarks.pretraining.train import export_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)
    vit = build_vit(embed_dim=48, depth=2, num_heads=4, img_size=32)
    ckpt = tmp_path / "teacher_backbone.pth"
    export_teacher(SimpleNamespace(backbone=vit), {"arch": "custom", "patch_size": 16,
                                                   "img_size": 32, "embed_dim": 48, "depth": 2,
                                                   "num_heads": 4}, ckpt)
    export_hf(ckpt, tmp_path / "phikon_hf")
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "tile.png")

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_block("AutoImageProcessor"), str(DOC), "exec"), namespace)  # noqa: S102
    features = namespace["features"].detach()
    assert features.shape == (1, 48)

    ref = iBOTViT(architecture="auto", weights_path=ckpt, tile_size=32)
    expected = ref(ref.transform(Image.fromarray(rgb))[None])
    assert (features - expected).abs().max() <= 1e-4
