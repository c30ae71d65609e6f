"""Shared helper of the pre-training tests (a tiny run configuration)."""

from __future__ import annotations


def tiny_config(output_dir, image_dir, **over) -> dict:
    """Nested overrides for a tiny run (merged onto config.yaml defaults by make_config)."""
    cfg = {
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"image_dirs": [image_dir], "num_workers": 0},
        "model": {"arch": "vit_test", "patch_size": 8, "img_size": 32, "drop_path_rate": 0.1},
        "head": {"out_dim": 64, "patch_out_dim": 48, "hidden_dim": 32, "bottleneck_dim": 16},
        "crops": {"global_size": 32, "local_size": 16, "local_number": 2},
        "masking": {"probability": 1.0, "ratio": [0.2, 0.5]},
        "loss": {"warmup_teacher_temp_epochs": 1},
        "optim": {"batch_size_per_gpu": 2, "epochs": 2, "warmup_epochs": 0,
                  "freeze_last_layer": 1, "lr": 0.05},
    }
    for key, value in over.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def write_tiny_images(root) -> str:
    """Eight 40x40 H&E-ish PNGs (pink or purple noise) in ``root``; returns its path."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(8):
        base = np.array([200, 120, 180]) if i % 2 else np.array([120, 80, 170])
        arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(Path(root) / f"tile{i}.png")
    return str(root)
