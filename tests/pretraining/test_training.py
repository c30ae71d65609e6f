"""One tiny training step on CPU, EMA, masking, resume, export, CLI and torchrun."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testlib.pretrain import tiny_config

from rl_benchmarks.pretraining.train import PretrainError, Trainer, make_config, train

REPO = Path(__file__).resolve().parents[2]


def _trainer(tmp_path, image_dir, **over) -> Trainer:
    return Trainer(make_config(tiny_config(tmp_path / "run", image_dir, **over)))


def _batch(trainer: Trainer, epoch: int = 0):
    from rl_benchmarks.pretraining.data import collate

    return collate([trainer.dataset[(epoch, i)] for i in range(trainer.batch_size)])


def test_one_step_finite_and_teacher_changes_only_by_ema(tmp_path, image_dir):
    tr = _trainer(tmp_path, image_dir)
    teacher_before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in tr.teacher.parameters()}  # never optimised
    row = tr.train_step(_batch(tr))
    for key in ("loss", "cls", "patch"):
        assert np.isfinite(row[key]) and row[key] > 0
    m = row["momentum"]
    assert 0.99 < m < 1.0
    student = tr.student.state_dict()
    for name, p in tr.teacher.named_parameters():
        assert p.grad is None and not p.requires_grad
        expected = m * teacher_before[name] + (1 - m) * student[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    # the student did move (so the check above is not trivially "nothing changed")
    moved = [k for k in teacher_before if not torch.equal(student[k], teacher_before[k])]
    assert len(moved) > 10


def test_last_layer_frozen_during_first_epoch(tmp_path, image_dir):
    tr = _trainer(tmp_path, image_dir)
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    tr.train_step(_batch(tr))  # step 0: epoch 0 < freeze_last_layer=1
    after = tr.student.state_dict()
    for k in ("head.last_layer.weight_v", "head.last_layer2.weight_v"):
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert not torch.equal(after["head.mlp.0.weight"], before["head.mlp.0.weight"])
    tr.step = tr.ipe  # first step of epoch 1: the last layer now learns
    tr.train_step(_batch(tr, epoch=1))
    assert not torch.equal(tr.student.state_dict()["head.last_layer.weight_v"],
                           before["head.last_layer.weight_v"])


def test_masked_tokens_only_in_student_input(tmp_path, image_dir):
    tr = _trainer(tmp_path, image_dir)
    with torch.no_grad():
        tr.student.backbone.masked_embed.normal_()  # distinguishable from any patch embedding
    mask_token = tr.student.backbone.masked_embed.detach().clone()
    vit = copy.deepcopy(tr.teacher.backbone)  # pre-step weights (the EMA moves the teacher)
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    hooks = [
        net.backbone.blocks[0].register_forward_pre_hook(
            lambda _m, args, who=who: seen[who].append(args[0].detach().clone()))
        for who, net in (("student", tr.student), ("teacher", tr.teacher))
    ]
    batch = _batch(tr)
    masks = batch["masks"]
    assert masks.any() and not masks.all()
    tr.train_step(batch)
    for h in hooks:
        h.remove()
    assert len(seen["teacher"]) == 1  # the teacher sees the global crops only, once
    student_global, teacher_global = seen["student"][0], seen["teacher"][0]

    pos = vit.pos_embed[:, 1:].detach()
    with torch.no_grad():
        plain = vit.patch_embed.proj(batch["global"]).flatten(2).transpose(1, 2)
    flat = masks.flatten(1)
    s_tokens = student_global[:, 1:] - pos
    t_tokens = teacher_global[:, 1:] - pos
    # teacher: every token is the real patch embedding (no [MASK] anywhere)
    torch.testing.assert_close(t_tokens, plain, rtol=1e-4, atol=1e-4)
    # student: the patch embedding where unmasked, the [MASK] token where masked
    torch.testing.assert_close(s_tokens[~flat], plain[~flat], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_tokens[flat], mask_token.expand(int(flat.sum()), -1),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(s_tokens[flat], plain[flat], atol=1e-2)


def test_bf16_autocast_step_is_finite(tmp_path, image_dir):
    tr = _trainer(tmp_path, image_dir, precision="bf16")
    row = tr.train_step(_batch(tr))
    assert np.isfinite(row["loss"])
    assert all(p.dtype == torch.float32 for p in tr.student.parameters())  # fp32 master weights


def test_fp16_scaler_state_is_checkpointed(tmp_path, image_dir):
    tr = _trainer(tmp_path, image_dir, precision="fp16")
    row = tr.train_step(_batch(tr))
    assert np.isfinite(row["loss"]) and tr.scaler is not None
    state = tr.state_dict()["fp16_scaler"]
    assert state and state["scale"] == tr.scaler.get_scale()


def test_resume_reproduces_next_step_loss(tmp_path, image_dir):
    """Run 3 steps straight; run 2 steps, stop, resume for the 3rd: same losses."""
    straight = train(tiny_config(tmp_path / "a", image_dir, max_steps=3, export={"teacher": False}))
    assert straight["step"] == 3
    first = train(tiny_config(tmp_path / "b", image_dir, max_steps=2, export={"teacher": False}))
    assert first["step"] == 2
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    expected = {"student", "teacher", "optimizer", "epoch", "ibot_loss", "fp16_scaler", "rng"}
    assert expected <= set(ckpt)
    assert ckpt["step"] == 2 and all(k.startswith("module.") for k in ckpt["student"])
    assert "center" in ckpt["ibot_loss"] and "center2" in ckpt["ibot_loss"]
    resumed = train(tiny_config(tmp_path / "b", image_dir, max_steps=3, export={"teacher": False}))
    assert resumed["resumed"] and resumed["steps_run"] == 1
    import pandas as pd

    a = pd.read_csv(tmp_path / "a" / "train_log.csv")
    b = pd.read_csv(tmp_path / "b" / "train_log.csv")
    assert list(b["step"]) == [0, 1, 2]
    np.testing.assert_allclose(b["loss"].to_numpy(), a["loss"].to_numpy(), rtol=1e-6, atol=1e-7)
    sa = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)["teacher"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)["teacher"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


def test_export_loads_in_ibotvit_and_create_extractor(tmp_path, image_dir):
    summary = train(tiny_config(tmp_path / "run", image_dir, max_steps=1))
    path = Path(summary["files"]["teacher_backbone"])
    state = torch.load(path, weights_only=True)
    assert set(state) == {"teacher", "arch"}
    assert all(k.startswith("backbone.") for k in state["teacher"])
    teacher = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["teacher"]

    from rl_benchmarks.models.feature_extractors.ibot_vit import iBOTViT
    from rl_benchmarks.models.feature_extractors.registry import create_extractor
    from rl_benchmarks.pretraining.ibot import build_vit

    ref = build_vit("vit_test", patch_size=8, img_size=32)
    ref.load_state_dict({k.removeprefix("backbone."): v for k, v in teacher.items()
                         if k.startswith("backbone.")})
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 0]
    ext = iBOTViT(architecture="auto", weights_path=path, num_heads=2)
    torch.testing.assert_close(ext(x), expected, rtol=1e-5, atol=1e-5)
    # the full training checkpoint is an iBOT checkpoint too (heads and [MASK] ignored)
    for encoder in ("teacher", "student"):
        full = iBOTViT(architecture="auto", encoder=encoder,
                       weights_path=tmp_path / "run" / "checkpoint.pth", num_heads=2)
        assert full(x).shape == (2, 32)
    via_registry = create_extractor("iBOTViTBaseCOAD", weights_path=path, architecture="auto",
                                    num_heads=2)
    torch.testing.assert_close(via_registry(x), expected, rtol=1e-5, atol=1e-5)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _overrides(out: Path, image_dir: str) -> list[str]:
    return [f"output_dir={out}", f"data.image_dirs=[{image_dir}]", "data.num_workers=0",
            "model.arch=vit_test", "model.patch_size=8", "model.img_size=32",
            "crops.global_size=32", "crops.local_size=16", "crops.local_number=2",
            "head.out_dim=32", "head.patch_out_dim=32", "head.hidden_dim=16",
            "head.bottleneck_dim=8", "optim.batch_size_per_gpu=2", "optim.epochs=2"]


def test_cli_errors_are_one_line(tmp_path, image_dir, capsys):
    from rl_benchmarks.cli.main import main

    assert main(["pretrain", f"data.image_dirs=[{image_dir}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "output_dir is required" in err
    assert main(["pretrain", f"output_dir={tmp_path}/o", f"data.image_dirs=[{tmp_path}/none]"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["pretrain", f"output_dir={tmp_path}/o", f"data.image_dirs=[{image_dir}]",
                 "optim.batch_size_per_gpu=64"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    with pytest.raises(PretrainError, match="unknown config key 'optim.lrr'"):
        make_config({"optim": {"lrr": 1}})


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, image_dir):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "rl_benchmarks.cli.main", "pretrain",
           *_overrides(out, image_dir), "max_steps=2", "device=cpu"]
    # own session, so that a timeout ends the launcher *and* its workers
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["world_size"] == 2
    assert ckpt["steps_per_epoch"] == 2  # 8 tiles / (2 per process x 2 processes)
    assert "2 process(es)" in stderr and "ran 2 steps" in stderr
    assert (out / "teacher_backbone.pth").is_file()
