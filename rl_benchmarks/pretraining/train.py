"""iBOT training loop: one process, or DistributedDataParallel under ``torchrun`` (gloo on
CPU, NCCL on GPU); crash-safe checkpoints in the iBOT format; exact resume; export.

Checkpoint (``<output_dir>/checkpoint.pth``, written atomically by rank 0) keys:
``student`` (DDP-style ``module.backbone.*``/``module.head.*``), ``teacher``
(``backbone.*``/``head.*``), ``optimizer``, ``epoch`` (completed epochs), ``step`` (next
global step), ``ibot_loss`` (the two centers), ``fp16_scaler``, ``rng``, ``arch``,
``config``, ``world_size``. It holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``.

Randomness is derived, not carried: the crops of a tile depend on (seed, epoch, index), the
tile order on (seed, epoch), and drop-path on (seed, rank, step). Resuming at step k thus
reproduces step k exactly (the checkpoint also stores the RNG states, for completeness).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rl_benchmarks.pretraining.augment import AugmentConfig, MultiCropAugmentation
from rl_benchmarks.pretraining.data import (
    ConcatTiles,
    ImageTiles,
    PretrainDataset,
    RunSampler,
    SlideTiles,
    collate,
    list_images,
    read_slides_csv,
    steps_per_epoch,
)
from rl_benchmarks.pretraining.ibot import (
    ARCHS,
    build_ibot_pair,
    cancel_last_layer_grads,
    clip_gradients,
    cosine_schedule,
    ema_pairs,
    ema_update,
    iBOTLoss,
    koleo_loss,
    param_groups,
)
from rl_benchmarks.pretraining.masking import MaskGenerator
from rl_benchmarks.utils.io import atomic_open, write_csv, write_text
from rl_benchmarks.utils.seed import derive_seed, set_seed

CHECKPOINT = "checkpoint.pth"
EXPORT = "teacher_backbone.pth"
LOG = "train_log.csv"
CURVE = "loss_curve.png"


class PretrainError(ValueError):
    """A user-facing problem (bad configuration, data or checkpoint)."""


# --------------------------------------------------------------------------- config


def load_defaults() -> dict:
    """The defaults of ``rl_benchmarks/conf/pretrain/config.yaml`` as a plain dict."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "conf" / "pretrain" / "config.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def make_config(cfg: Any = None, **overrides: Any) -> dict:
    """A full plain-dict config: defaults, then ``cfg`` (dict or DictConfig), then
    ``overrides`` (nested dicts). Unknown keys are an error naming the key."""
    if cfg is not None and not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    defaults = load_defaults()
    merged = _merge(defaults, cfg or {})
    merged = _merge(merged, overrides)
    _check_keys(defaults, merged, "")
    return merged


def _check_keys(ref: dict, cfg: dict, prefix: str) -> None:
    for k, v in cfg.items():
        if k not in ref:
            raise PretrainError(f"unknown config key '{prefix}{k}'; see rlbench pretrain --help")
        if isinstance(ref[k], dict) and isinstance(v, dict):
            _check_keys(ref[k], v, f"{prefix}{k}.")


# --------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PretrainError(f"device={device} but CUDA is not available")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


# --------------------------------------------------------------------------- data


def build_tiles(data: dict) -> ConcatTiles:
    """All tile sources of ``data`` (image folders and/or slides through coords)."""
    sources: list = []
    dirs = data.get("image_dirs") or []
    if dirs:
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        sources.append(ImageTiles(list_images(dirs), data.get("tile_size"),
                                  float(data.get("min_tissue") or 0.0)))
    entries: list[tuple[str, str]] = []
    if data.get("slides_csv"):
        entries += read_slides_csv(data["slides_csv"])
    for item in data.get("slides") or []:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            entries.append((item[0], item[1]))
        elif isinstance(item, str) and item.count(":") >= 1:
            slide, coords = item.rsplit(":", 1)
            entries.append((slide, coords))
        else:
            raise PretrainError(f"data.slides: {item!r} is not 'slide_path:coords_path'")
    if entries:
        sources.append(SlideTiles(entries, int(data.get("slide_tile_size", 224)),
                                  data.get("max_tiles_per_slide")))
    if not sources:
        raise PretrainError("no data: set data.image_dirs=[folder,...] and/or data.slides_csv="
                            "<csv with slide_path,coords_path>")
    tiles = ConcatTiles(sources)
    if len(tiles) == 0:
        raise PretrainError("the data sources hold no tiles (check data.min_tissue and coords)")
    return tiles


def build_dataset(cfg: dict, tiles=None) -> PretrainDataset:
    """Tiles -> multi-crop views + global-crop masks."""
    crops, aug = cfg["crops"], cfg["augment"]
    augment = MultiCropAugmentation(AugmentConfig(
        global_size=int(crops["global_size"]), local_size=int(crops["local_size"]),
        local_number=int(crops["local_number"]), global_scale=tuple(crops["global_scale"]),
        local_scale=tuple(crops["local_scale"]), **aug))
    m = cfg["masking"]
    masks = MaskGenerator(tuple(m["ratio"]), float(m["probability"]), int(m["min_block"]),
                          float(m["min_aspect"]))
    tiles = build_tiles(cfg["data"]) if tiles is None else tiles
    return PretrainDataset(tiles, augment, masks, int(cfg["model"]["patch_size"]),
                           seed=int(cfg["seed"]))


# --------------------------------------------------------------------------- trainer


def _arch_info(model_cfg: dict) -> dict:
    spec = ARCHS[model_cfg["arch"]]
    return {"arch": model_cfg["arch"], "patch_size": int(model_cfg["patch_size"]),
            "img_size": int(model_cfg["img_size"]), "embed_dim": spec.embed_dim,
            "depth": spec.depth, "num_heads": spec.num_heads}


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class Trainer:
    """Student, EMA teacher, loss, optimizer and schedules for one iBOT run."""

    def __init__(self, cfg: dict, dataset: PretrainDataset | None = None,
                 dist_info: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.output_dir = Path(cfg["output_dir"]).expanduser()
        model_cfg, optim = cfg["model"], cfg["optim"]
        if model_cfg["arch"] not in ARCHS:
            raise PretrainError(f"model.arch={model_cfg['arch']!r} is unknown; expected one of "
                                f"{sorted(ARCHS)}")
        if cfg["precision"] not in ("fp32", "bf16", "fp16"):
            raise PretrainError(f"precision={cfg['precision']!r}; expected fp32, bf16 or fp16")
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        self.batch_size = int(optim["batch_size_per_gpu"])
        if self.batch_size < 1:
            raise PretrainError(f"optim.batch_size_per_gpu must be >= 1, got {self.batch_size}")
        self.ipe = steps_per_epoch(len(self.dataset), self.batch_size, self.dist.world_size)
        if self.ipe < 1:
            raise PretrainError(
                f"{len(self.dataset)} tiles are fewer than one batch (optim.batch_size_per_gpu="
                f"{self.batch_size} x {self.dist.world_size} process(es))")
        self.epochs = int(optim["epochs"])
        if self.epochs < 1:
            raise PretrainError(f"optim.epochs must be >= 1, got {self.epochs}")
        self.total_steps = self.epochs * self.ipe

        set_seed(int(cfg["seed"]))  # same initial weights on every rank
        student, teacher = build_ibot_pair(model_cfg, cfg["head"])
        dev = self.dist.device
        self.student, self.teacher = student.to(dev), teacher.to(dev)
        self.student_ddp: nn.Module = self.student
        if self.dist.distributed:
            self.student_ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.s_params, self.t_params = ema_pairs(self.student, self.teacher)

        head, loss = cfg["head"], cfg["loss"]
        loss = dict(loss)
        self.koleo_weight = float(loss.pop("koleo_weight", 0.0) or 0.0)
        self.loss_fn = iBOTLoss(int(head["out_dim"]), int(head["patch_out_dim"]), n_global=2,
                                n_local=int(cfg["crops"]["local_number"]), epochs=self.epochs,
                                **loss).to(dev)
        self.optimizer = torch.optim.AdamW(param_groups(self.student))
        total_batch = self.batch_size * self.dist.world_size
        warmup = int(round(float(optim["warmup_epochs"]) * self.ipe))
        self.lr = cosine_schedule(float(optim["lr"]) * total_batch / 256.0, float(optim["min_lr"]),
                                  self.total_steps, warmup)
        self.wd = cosine_schedule(float(optim["weight_decay"]), float(optim["weight_decay_end"]),
                                  self.total_steps)
        self.momentum = cosine_schedule(float(optim["momentum_teacher"]), 1.0, self.total_steps)
        self.clip = float(optim["clip_grad"] or 0.0)
        self.freeze_last_layer = int(optim["freeze_last_layer"])
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
        self.scaler = (torch.amp.GradScaler(dev.type) if cfg["precision"] == "fp16" else None)
        self.step = 0
        self.history: list[dict] = []

    # ---------------------------------------------------------------- one step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step at ``self.step``; returns the losses and schedule values."""
        step, dev = self.step, self.dist.device
        epoch = step // self.ipe
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[step])
            if i == 0:
                group["weight_decay"] = float(self.wd[step])
        torch.manual_seed(derive_seed(self.cfg["seed"], "pretrain-model", self.dist.rank, step))
        glob = batch["global"].to(dev, non_blocking=True)
        local = batch["local"].to(dev, non_blocking=True)
        masks = batch["masks"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            with torch.no_grad():
                t_cls, t_patch = self.teacher(glob)
            if self.koleo_weight:
                s_cls, s_patch, s_feat = self.student_ddp(glob, masks, local,
                                                          return_backbone_cls=True)
            else:
                s_cls, s_patch = self.student_ddp(glob, masks, local)
        losses = self.loss_fn(s_cls, s_patch, t_cls, t_patch, masks, epoch)
        if self.koleo_weight:
            losses["koleo"] = koleo_loss(s_feat, n_chunks=2)
            losses["loss"] = losses["loss"] + self.koleo_weight * losses["koleo"]
        loss = losses["loss"]
        if not math.isfinite(float(loss.detach())):
            raise PretrainError(f"loss is {float(loss)} at step {step}: training diverged "
                                f"(lower optim.lr, or use precision=fp32)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip:
                self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip:
            clip_gradients(self.student, self.clip)
        if epoch < self.freeze_last_layer:
            cancel_last_layer_grads(self.student)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        momentum = float(self.momentum[step])
        ema_update(self.s_params, self.t_params, momentum)
        self.loss_fn.update_center(t_cls, t_patch)
        self.step += 1
        ep = min(epoch, len(self.loss_fn.teacher_temps) - 1)
        return {"step": step, "epoch": epoch, "loss": float(loss.detach()),
                "cls": float(losses["cls"].detach()), "patch": float(losses["patch"].detach()),
                "cls_kl": float(losses["cls_kl"]), "patch_kl": float(losses["patch_kl"]),
                "lr": float(self.lr[step]), "wd": float(self.wd[step]), "momentum": momentum,
                "teacher_temp": float(self.loss_fn.teacher_temps[ep]),
                "masked_fraction": float(masks.float().mean()),
                **({"koleo": float(losses["koleo"].detach())} if self.koleo_weight else {})}

    def monitor(self, crops: torch.Tensor) -> dict[str, float]:
        """Collapse diagnostics of the teacher on ``crops`` (see ``monitor.py``), with the
        current center and teacher temperature."""
        from rl_benchmarks.pretraining.monitor import collapse_stats

        ep = min(self.step // self.ipe, len(self.loss_fn.teacher_temps) - 1)
        return collapse_stats(self.teacher, crops, self.loss_fn.center,
                              float(self.loss_fn.teacher_temps[ep]))

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        from omegaconf import OmegaConf

        cfg = self.cfg if isinstance(self.cfg, dict) else OmegaConf.to_container(self.cfg)
        return {
            "student": {f"module.{k}": v for k, v in self.student.state_dict().items()},
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.step // self.ipe,
            "step": self.step,
            "ibot_loss": self.loss_fn.state_dict(),
            "fp16_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(),
            "arch": _arch_info(self.cfg["model"]),
            "config": cfg,
            "world_size": self.dist.world_size,
            "steps_per_epoch": self.ipe,
        }

    def save(self, path: Path | None = None) -> Path:
        """Write the checkpoint atomically (rank 0 only) and the log next to it."""
        path = Path(path) if path else self.output_dir / CHECKPOINT
        if self.dist.is_main:
            state = self.state_dict()
            with atomic_open(path, "wb") as f:
                torch.save(state, f)
            self.write_log()
        return path

    def load(self, path: Path) -> None:
        """Restore everything a resume needs from ``path``."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainError(f"{path}: cannot read checkpoint ({e})") from e
        missing = {"student", "teacher", "optimizer", "step", "ibot_loss"} - set(ckpt)
        if missing:
            raise PretrainError(f"{path}: not a resumable rlbench pretrain checkpoint "
                                f"(missing {sorted(missing)})")
        arch = _arch_info(self.cfg["model"])
        if ckpt.get("arch") and ckpt["arch"] != arch:
            raise PretrainError(f"{path}: checkpoint model {ckpt['arch']} differs from the "
                                f"configured {arch}")
        if ckpt.get("steps_per_epoch", self.ipe) != self.ipe:
            print(f"rlbench pretrain: warning: {path} was written with "
                  f"{ckpt['steps_per_epoch']} steps per epoch, now {self.ipe} (data, batch "
                  f"size or process count changed); schedules follow the new value",
                  file=sys.stderr)
        student = {k.removeprefix("module."): v for k, v in ckpt["student"].items()}
        self.student.load_state_dict(student)
        self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loss_fn.load_state_dict(ckpt["ibot_loss"])
        if self.scaler is not None and ckpt.get("fp16_scaler"):
            self.scaler.load_state_dict(ckpt["fp16_scaler"])
        if ckpt.get("rng"):
            _set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.history = [row for row in self._read_log() if int(row["step"]) < self.step]

    def _read_log(self) -> list[dict]:
        import pandas as pd

        path = self.output_dir / LOG
        if not path.is_file():
            return []
        return pd.read_csv(path).to_dict("records")

    def write_log(self) -> None:
        import pandas as pd

        if self.history:
            write_csv(self.output_dir / LOG, pd.DataFrame(self.history), index=False)

    # ---------------------------------------------------------------- export

    def export_teacher(self, path: Path | None = None) -> Path:
        """Teacher backbone in the iBOT format: ``{"teacher": {"backbone.<timm key>": ...}}``
        (plus ``arch``), loadable by ``iBOTViT(..., encoder="teacher", weights_path=path)``."""
        path = Path(path) if path else self.output_dir / EXPORT
        if self.dist.is_main:
            export_teacher(self.teacher, _arch_info(self.cfg["model"]), path)
        return path


def export_teacher(teacher: nn.Module, arch: dict, path: str | Path) -> Path:
    """Write ``{"teacher": {"backbone.*"}, "arch": arch}`` atomically to ``path``."""
    backbone = teacher.backbone.state_dict()
    state = {"teacher": {f"backbone.{k}": v.detach().cpu().clone() for k, v in backbone.items()},
             "arch": dict(arch)}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return Path(path)


def plot_losses(history: list[dict], path: str | Path, title: str = "iBOT pre-training") -> None:
    """Left: total, [CLS] and patch losses; right: their KL parts (cross-entropy minus
    teacher entropy) and the teacher temperature. Raw values faint, moving averages bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    win = max(1, len(history) // 25)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=90)

    def curve(ax, key: str, colour: str, label: str) -> None:
        if key not in history[0]:
            return
        y = np.array([h[key] for h in history], dtype=float)
        ax.plot(steps, y, color=colour, alpha=0.25, lw=0.8)
        if len(y) >= win:
            smooth = np.convolve(y, np.ones(win) / win, mode="valid")
            ax.plot(steps[win - 1:], smooth, color=colour, lw=1.6, label=label)

    for key, colour in (("loss", "k"), ("cls", "tab:blue"), ("patch", "tab:orange")):
        curve(axes[0], key, colour, f"{key} (mean of {win})")
    for key, colour in (("cls_kl", "tab:blue"), ("patch_kl", "tab:orange")):
        curve(axes[1], key, colour, f"{key} (mean of {win})")
    axes[0].set_title(title)
    axes[1].set_title("KL part of the losses")
    if "teacher_temp" in history[0]:
        twin = axes[1].twinx()
        twin.plot(steps, [h["teacher_temp"] for h in history], color="grey", ls="--", lw=1)
        twin.set_ylabel("teacher temperature (dashed)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- run


def train(cfg: Any, dataset: PretrainDataset | None = None) -> dict:
    """Run (or resume) an iBOT pre-training described by ``cfg`` (see config.yaml);
    returns a summary dict. Under torchrun every process calls this."""
    cfg = make_config(cfg)
    if cfg.get("output_dir") in (None, "", "???"):
        raise PretrainError("output_dir is required: pass output_dir=<folder>")
    info = setup_distributed(str(cfg["device"]))
    try:
        return _run(cfg, info, dataset)
    finally:
        if info.distributed:
            dist.destroy_process_group()


def _run(cfg: dict, info: DistInfo, dataset: PretrainDataset | None) -> dict:
    from tqdm import tqdm

    trainer = Trainer(cfg, dataset, info)
    out = trainer.output_dir
    ckpt = cfg.get("resume_from") or (out / CHECKPOINT if cfg.get("resume") else None)
    if cfg.get("resume_from") and not Path(ckpt).is_file():
        raise PretrainError(f"resume_from: {ckpt} does not exist")
    resumed = False
    if ckpt and Path(ckpt).is_file():
        trainer.load(Path(ckpt))
        resumed = True
    if info.is_main:
        from omegaconf import OmegaConf

        write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    end = trainer.total_steps
    if cfg.get("max_steps") is not None:
        end = min(end, int(cfg["max_steps"]))
    limit = cfg.get("time_limit_min")
    limit_s = None if limit is None else float(limit) * 60.0
    sampler = RunSampler(len(trainer.dataset), trainer.batch_size, int(cfg["seed"]),
                         total_steps=end, start_step=trainer.step, rank=info.rank,
                         world_size=info.world_size)
    workers = int(cfg["data"]["num_workers"])
    loader = torch.utils.data.DataLoader(
        trainer.dataset, batch_size=trainer.batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate, drop_last=True, pin_memory=info.device.type == "cuda",
        persistent_workers=False)
    if info.is_main:
        print(f"rlbench pretrain: {trainer.dataset.tiles.describe()}; {trainer.ipe} steps/epoch, "
              f"{trainer.epochs} epochs; {info.world_size} process(es) on {info.device}"
              + (f"; resumed at step {trainer.step}" if resumed else ""), file=sys.stderr)
    start_step, t0 = trainer.step, time.perf_counter()
    save_every = int(cfg.get("save_every_steps") or 0)
    keep_every = int(cfg.get("saveckp_freq") or 0)
    stopped_early = False
    bar = tqdm(total=end, initial=trainer.step, disable=not info.is_main, unit="step",
               dynamic_ncols=True, desc="iBOT")
    mon_cfg = cfg.get("monitor") or {}
    mon_every = int(mon_cfg.get("every_steps") or 0) if info.is_main else 0
    mon_crops = None
    if mon_every:
        from rl_benchmarks.pretraining.monitor import centre_crops, monitor_images

        mon_crops = centre_crops(
            monitor_images(trainer.dataset.tiles, int(mon_cfg.get("tiles") or 64),
                           int(cfg["seed"])),
            int(cfg["crops"]["global_size"])).to(info.device)
    for batch in loader:
        stats = (trainer.monitor(mon_crops) if mon_every and trainer.step % mon_every == 0
                 else {})
        row = trainer.train_step(batch)
        row.update(stats)
        row["elapsed_s"] = time.perf_counter() - t0
        trainer.history.append(row)
        bar.update(1)
        rate = (trainer.step - start_step) * trainer.batch_size * info.world_size / row["elapsed_s"]
        bar.set_postfix(loss=f"{row['loss']:.3f}", ep=row["epoch"], tiles_s=f"{rate:.1f}")
        epoch_done = trainer.step % trainer.ipe == 0
        if epoch_done or (save_every and trainer.step % save_every == 0):
            trainer.save()
            done_epochs = trainer.step // trainer.ipe
            if epoch_done and keep_every and done_epochs % keep_every == 0:
                trainer.save(out / f"checkpoint{done_epochs:04d}.pth")
        if limit_s is not None:
            stop = torch.tensor([float(time.perf_counter() - t0 > limit_s)])
            if info.distributed:
                dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item() > 0 and trainer.step < end:
                stopped_early = True
                break
    bar.close()
    elapsed = time.perf_counter() - t0
    if mon_every and trainer.history:  # the final state, logged with the last step
        trainer.history[-1].update({f"{k}_end": v for k, v in
                                    trainer.monitor(mon_crops).items()})
    trainer.save()
    files = {"checkpoint": str(out / CHECKPOINT), "log": str(out / LOG)}
    if cfg["export"]["teacher"]:
        files["teacher_backbone"] = str(trainer.export_teacher())
    if info.is_main and trainer.history:
        plot_losses(trainer.history, out / CURVE)
        files["loss_curve"] = str(out / CURVE)
    if cfg["export"].get("hf_dir") and info.is_main:
        if not cfg["export"]["teacher"]:
            raise PretrainError("export.hf_dir needs export.teacher=true")
        files["hf_dir"] = export_hf(out / EXPORT, cfg["export"]["hf_dir"],
                                    ARCHS[cfg["model"]["arch"]].num_heads)
    steps_run = trainer.step - start_step
    summary = {
        "steps_run": steps_run, "step": trainer.step, "total_steps": trainer.total_steps,
        "epoch": trainer.step / trainer.ipe, "elapsed_s": elapsed,
        "tiles_per_s": steps_run * trainer.batch_size * info.world_size / max(elapsed, 1e-9),
        "last_loss": trainer.history[-1]["loss"] if trainer.history else None,
        "stopped_early": stopped_early, "resumed": resumed, "files": files,
    }
    if info.is_main:
        last = summary["last_loss"]
        print(f"rlbench pretrain: ran {steps_run} steps in {elapsed:.1f} s "
              f"({summary['tiles_per_s']:.2f} tiles/s), now at step {trainer.step}/"
              f"{trainer.total_steps} (epoch {summary['epoch']:.2f}); last loss "
              f"{'n/a' if last is None else f'{last:.4f}'}"
              + ("; stopped by time_limit_min" if stopped_early else ""), file=sys.stderr)
        for name, path in files.items():
            print(f"  {name}: {path}", file=sys.stderr)
    return summary


def export_hf(teacher_path: Path, hf_dir: str | Path, num_heads: int) -> str:
    """Convert the exported teacher into an owkin/phikon-style HF folder (what
    ``rlbench export-hf weights_path=<teacher_backbone.pth> output_dir=<hf_dir>`` does),
    checked against iBOTViT on random inputs."""
    try:
        from rl_benchmarks.models.feature_extractors.hf import export_hf as _export
    except ImportError as e:  # pragma: no cover - part of the package
        raise PretrainError(f"export.hf_dir needs rlbench export-hf ({e})") from e
    _export(teacher_path, hf_dir, encoder="teacher", architecture="auto", num_heads=num_heads)
    return str(hf_dir)
