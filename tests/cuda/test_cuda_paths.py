"""The CUDA code paths, checked against the CPU: slide extraction (fp32 equal, bf16/fp16
close), iBOT steps (fp32 equal to the CPU step; bf16 and fp16 finite with an EMA-only
teacher; resume), the MIL ensemble fast path (equal to plain CPU runs).

Skipped without a GPU (CI has none); run them on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TESTS = Path(__file__).resolve().parents[1]

TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]


# --------------------------------------------------------------------------- extraction


def _extract(slide: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    from rl_benchmarks.cli.main import run

    code = run("extract-slides", [f"slides={slide}", f"output_dir={out}", "num_workers=2",
                                  "batch_size=16", "progress=false", *TINY, *extra])
    assert code == 0
    return {p.parent.name: np.load(p) for p in out.glob("*/features.npy")}


@pytest.mark.real_data
def test_slide_extraction_on_gpu_matches_cpu(real_data, tmp_path):
    slide = tmp_path / "CMU-1-Small-Region.svs"
    shutil.copy(real_data / "slides" / "svs" / slide.name, slide)
    cpu = _extract(slide, tmp_path / "cpu", "device=-1")
    assert list(cpu) == [slide.name] and len(cpu[slide.name]) > 30
    ref = cpu[slide.name]
    gpu = _extract(slide, tmp_path / "gpu", "device=0")[slide.name]
    np.testing.assert_array_equal(gpu[:, :3], ref[:, :3])  # same tiles, same order
    np.testing.assert_allclose(gpu[:, 3:], ref[:, 3:], atol=1e-4, rtol=1e-4)
    for precision in ("bf16", "fp16"):
        low = _extract(slide, tmp_path / precision, "device=0", f"precision={precision}")
        a, b = low[slide.name][:, 3:], ref[:, 3:]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > 0.99, (precision, cos.min())
        assert not np.array_equal(a, b)  # autocast did run in lower precision


# --------------------------------------------------------------------------- iBOT


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> str:
    from testlib.pretrain import write_tiny_images

    return write_tiny_images(tmp_path_factory.mktemp("imgs"))


def _trainer(out: Path, image_dir: str, device: str, **over):
    from testlib.pretrain import tiny_config

    from rl_benchmarks.pretraining.train import Trainer, make_config, setup_distributed

    cfg = make_config(tiny_config(out, image_dir, **over))
    return Trainer(cfg, dist_info=setup_distributed(device))


def _batch(trainer, epoch: int = 0):
    from rl_benchmarks.pretraining.data import collate

    return collate([trainer.dataset[(epoch, i)] for i in range(trainer.batch_size)])


def test_ibot_fp32_step_on_gpu_equals_cpu_step(tmp_path, image_dir):
    no_drop = {"model": {"arch": "vit_test", "patch_size": 8, "img_size": 32,
                         "drop_path_rate": 0.0}}
    cpu = _trainer(tmp_path / "cpu", image_dir, "cpu", **no_drop)
    gpu = _trainer(tmp_path / "gpu", image_dir, "cuda", **no_drop)
    assert next(gpu.student.parameters()).is_cuda
    for _ in range(2):  # the second step sees the first update and the moved centre
        batch = _batch(cpu)
        a, b = cpu.train_step(batch), gpu.train_step(batch)
        for key in ("loss", "cls", "patch"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    for (name, p), q in zip(cpu.teacher.named_parameters(), gpu.teacher.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ibot_autocast_steps_on_gpu(tmp_path, image_dir, precision):
    tr = _trainer(tmp_path, image_dir, "cuda", precision=precision)
    before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    row = tr.train_step(_batch(tr))
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("loss", "cls", "patch"))
    assert all(p.dtype == torch.float32 for p in tr.student.parameters())
    m, student = row["momentum"], tr.student.state_dict()
    for name, p in tr.teacher.named_parameters():  # the teacher moved by EMA only
        assert not p.requires_grad and p.grad is None
        torch.testing.assert_close(p.detach(), m * before[name] + (1 - m) * student[name],
                                   rtol=1e-5, atol=1e-6)
    if precision == "fp16":
        assert tr.scaler is not None and tr.state_dict()["fp16_scaler"]["scale"] > 0


def test_ibot_resume_on_gpu_reproduces_next_step(tmp_path, image_dir):
    from testlib.pretrain import tiny_config

    from rl_benchmarks.pretraining.train import train

    common = {"device": "cuda", "export": {"teacher": False},
              "data": {"image_dirs": [image_dir], "num_workers": 2}}
    straight = train(tiny_config(tmp_path / "a", image_dir, max_steps=3, **common))
    train(tiny_config(tmp_path / "b", image_dir, max_steps=2, **common))
    resumed = train(tiny_config(tmp_path / "b", image_dir, max_steps=3, **common))
    assert straight["step"] == resumed["step"] == 3 and resumed["resumed"]
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-5)


# --------------------------------------------------------------------------- MIL ensemble


@pytest.mark.parametrize("model", ["MeanPool", "Chowder", "ABMIL", "DSMIL"])
def test_ensemble_fast_path_on_gpu_equals_plain_cpu_runs(model):
    """The stacked-member (vmap) fast path. The fused tile layer of ABMIL/Chowder
    (``_fused_forward``) runs only where the features live (the CPU), so it is not what
    runs here."""
    from testlib.cv import ToyCohort, plain_run, trainer_cfg

    from rl_benchmarks.trainers.ensemble_trainer import EnsembleTrainer, preload
    from rl_benchmarks.val_schemes import update_trainer_cfg

    cohort = ToyCohort(n_patients=24, n_tiles=10, ragged=True)
    n = len(cohort)
    tr_idx, va_idx = list(range(n - 10)), list(range(n - 10, n))
    cfg = trainer_cfg(model, num_epochs=3, batch_size=4)
    members = [(1e-3, 0.0), (1e-2, 1e-2)]
    fast = EnsembleTrainer(update_trainer_cfg(cfg, {"device": "cuda"})).train(
        preload(cohort), tr_idx, va_idx, members, 3, seed=11)
    for (lr, wd), res in zip(members, fast):
        plain, tr_m, va_m = plain_run(cfg, cohort, tr_idx, va_idx, lr, wd, seed=11)
        np.testing.assert_allclose(res.train_metrics["loss"], tr_m["loss"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(res.val_metrics["loss"], va_m["loss"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(res.val_logits, plain.val_outputs[1], rtol=1e-3, atol=1e-4)
    bf16 = EnsembleTrainer(update_trainer_cfg(cfg, {"device": "cuda"}), precision="bf16").train(
        preload(cohort), tr_idx, va_idx, members, 3, seed=11)
    for a, b in zip(fast, bf16):
        assert np.all(np.isfinite(b.val_logits))
        np.testing.assert_allclose(b.val_logits, a.val_logits, atol=0.1)
