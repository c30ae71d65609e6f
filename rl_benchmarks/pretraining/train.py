"""iBOT training loop: one process, or DistributedDataParallel under ``torchrun`` (gloo on
CPU, NCCL on GPU); crash-safe checkpoints in the iBOT format; exact resume; export.

:func:`run` is the whole ``rlbench pretrain`` command (the CLI only prints its
:class:`PretrainResult`); :func:`make_config` composes ``conf/pretrain/config.yaml``
through Hydra with the caller's values as dotted overrides, like every other command.

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
from dataclasses import dataclass, field
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
from rl_benchmarks.utils.distributed import DistInfo, setup_distributed, shutdown
from rl_benchmarks.utils.io import atomic_open, write_csv, write_text
from rl_benchmarks.utils.overrides import hydra_value
from rl_benchmarks.utils.seed import derive_seed, set_seed

CHECKPOINT = "checkpoint.pth"
EXPORT = "teacher_backbone.pth"
LOG = "train_log.csv"
CURVE = "loss_curve.png"


class PretrainError(ValueError):
    """A user-facing problem (bad configuration, data or checkpoint)."""


# --------------------------------------------------------------------------- config

CONF_NAME = "config"


def _conf_dir() -> Path:
    from rl_benchmarks.paths import CONF_ROOT

    return CONF_ROOT / "pretrain"


def _to_plain(value: Any) -> Any:
    """A DictConfig/ListConfig, Path, tuple or numpy scalar as plain Python values."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_overrides(cfg: Any = None, **overrides: Any) -> list[str]:
    """``cfg`` (dict or DictConfig), then ``overrides`` (nested dicts), as Hydra overrides
    ``dotted.key=value`` (the command line that composes the same config)."""
    from rl_benchmarks.utils.cross_validation import flatten

    pairs = [*flatten(_to_plain(cfg) or {}).items(), *flatten(_to_plain(overrides)).items()]
    try:
        return [f"{key}={hydra_value(value)}" for key, value in pairs]
    except ValueError as err:
        raise PretrainError(str(err)) from None


def compose_config(overrides: list[str] | None = None) -> Any:
    """``rl_benchmarks/conf/pretrain/config.yaml`` composed by Hydra with ``overrides``
    (a DictConfig). A key the file does not have is a one-line :class:`PretrainError`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
            return compose(config_name=CONF_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise PretrainError(_composition_message(e, overrides)) from None


def _composition_message(error: Exception, overrides: list[str]) -> str:
    """One line for a failed composition: the unknown key (with close matches) or the
    first line of Hydra's message."""
    import difflib

    from omegaconf import OmegaConf

    first = str(error).strip().splitlines()
    line = f"config: {first[0] if first else type(error).__name__}"
    if not overrides:
        return line
    from rl_benchmarks.utils.cross_validation import flatten

    known = list(flatten(OmegaConf.to_container(compose_config())))
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in known and not any(k.startswith(key + ".") for k in known):
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return f"unknown config key '{key}'{hint}; see rlbench pretrain --help"
    return line


def make_config(cfg: Any = None, **overrides: Any) -> dict:
    """A full plain-dict config composed by Hydra: config.yaml's defaults, then ``cfg``
    (dict or DictConfig), then ``overrides`` (nested dicts). Unknown keys are an error
    naming the key."""
    from omegaconf import OmegaConf

    composed = OmegaConf.to_container(compose_config(config_overrides(cfg, **overrides)),
                                      resolve=True)
    _check_groups(OmegaConf.to_container(compose_config()), composed, "")
    return composed


def _check_groups(defaults: dict, cfg: dict, prefix: str) -> None:
    """A group of keys (``optim``, ``data``...) must stay a group, not become a value."""
    for key, value in defaults.items():
        if isinstance(value, dict):
            if not isinstance(cfg.get(key), dict):
                raise PretrainError(f"config key '{prefix}{key}' is a group of keys; set "
                                    f"{prefix}{key}.<key>=value (see rlbench pretrain --help)")
            _check_groups(value, cfg[key], f"{prefix}{key}.")


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
        if self.dist.enabled:
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


@dataclass(frozen=True)
class PretrainResult:
    """What one ``run`` did; every torchrun process returns one (rank 0 wrote the files)."""

    output_dir: Path
    steps_run: int  # optimiser steps taken by this call (after a resume: the new ones)
    step: int  # the next global step (steps done so far, resumes included)
    total_steps: int  # the schedules' length: epochs x steps per epoch
    epochs: float  # epochs done: step / steps per epoch
    last_loss: float | None
    teacher_path: Path | None  # the exported teacher backbone (export.teacher)
    seconds: float  # wall time of the training loop
    tiles_per_s: float
    stopped_early: bool  # time_limit_min ended the run before max_steps/epochs
    resumed: bool
    files: dict[str, str] = field(default_factory=dict)  # name -> path of what was written
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that prints."""
        return self.rank == 0

    def summary(self) -> dict:
        """The plain dict ``train`` returns (the keys it has always had)."""
        return {"steps_run": self.steps_run, "step": self.step, "total_steps": self.total_steps,
                "epoch": self.epochs, "elapsed_s": self.seconds,
                "tiles_per_s": self.tiles_per_s, "last_loss": self.last_loss,
                "stopped_early": self.stopped_early, "resumed": self.resumed,
                "files": dict(self.files)}


def run(cfg: Any, dataset: PretrainDataset | None = None) -> PretrainResult:
    """Run (or resume) an iBOT pre-training described by ``cfg`` (a dict or DictConfig of
    config.yaml's keys, composed onto its defaults). Under torchrun every process calls
    this; it joins the process group and leaves it before returning."""
    cfg = make_config(cfg)
    if cfg.get("output_dir") in (None, "", "???"):
        raise PretrainError("output_dir is required: pass output_dir=<folder>")
    info = setup_distributed(cfg["device"])
    try:
        return _run(cfg, info, dataset)
    finally:
        shutdown(info)


def train(cfg: Any, dataset: PretrainDataset | None = None) -> dict:
    """:func:`run`, returning its summary as a plain dict (steps, loss, files...)."""
    return run(cfg, dataset).summary()


def _run(cfg: dict, info: DistInfo, dataset: PretrainDataset | None) -> PretrainResult:
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
            if info.enabled:
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
    return PretrainResult(
        output_dir=out, steps_run=steps_run, step=trainer.step, total_steps=trainer.total_steps,
        epochs=trainer.step / trainer.ipe,
        last_loss=trainer.history[-1]["loss"] if trainer.history else None,
        teacher_path=Path(files["teacher_backbone"]) if "teacher_backbone" in files else None,
        seconds=elapsed,
        tiles_per_s=steps_run * trainer.batch_size * info.world_size / max(elapsed, 1e-9),
        stopped_early=stopped_early, resumed=resumed, files=files, rank=info.rank,
        world_size=info.world_size)


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
