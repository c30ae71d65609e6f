"""Parameter-efficient fine-tuning of Phikon (or any ViT extractor) on tile classification.

The reference ships this as a notebook (docs/protocol.md, "Reference notebook settings"): a
Hugging Face ``ViTModel`` with LoRA adapters (r=16, alpha=16, dropout 0.1) on the attention
query and value projections and a trainable classifier head, AdamW lr 5e-3, batch 128, 10 epochs,
best model kept by validation accuracy. ``mode="linear"`` runs the same loop with a frozen
backbone and a linear head so the gain from LoRA is measured side by side.

Without ``feature_extractor`` the backbone is a ``transformers.ViTModel``, built from an
owkin/phikon-style folder, from an iBOT checkpoint (converted in memory), or from random
weights when asked for explicitly (``pretrained=False``, tests and smoke runs).

With ``feature_extractor=<registered name>`` (any name of
:func:`~rl_benchmarks.models.feature_extractors.create_extractor`: UNI, Virchow2, H-optimus,
a ``timm:<arch>``, an encoder spec YAML ...) the backbone is built through the registry,
exactly as for extraction (weights loading, output rule, mean/std, tile size), and the
classifier sits on its features. LoRA goes on timm ViT blocks' ``attn.qkv`` (optionally
``attn.proj``) or on transformers' query/value projections. Its outputs are safetensors:
``adapter/``, ``merged/`` (the backbone with the adapters merged, loadable by the registry
under the same name) and ``classifier_head.safetensors`` (:func:`load_encoder_classifier`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD
from rl_benchmarks.models.feature_extractors.hf import hf_preprocessor_config, hf_vit_config
from rl_benchmarks.utils import io
from rl_benchmarks.utils.device import autocast, parse_device
from rl_benchmarks.utils.seed import set_seed

logger = logging.getLogger(__name__)


# transformers 4 names the attention projections query/key/value; transformers 5
# q_proj/k_proj/v_proj.
_QV_NAMES = (("q_proj", "v_proj"), ("query", "value"))


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults follow the reference tutorial)."""

    mode: str = "lora"  # "lora" or "linear"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    learning_rate: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    num_epochs: int = 10
    image_size: int = 224
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    augment: bool = True
    stain_jitter: float = 0.0  # HED jitter strength (0: off); rl_benchmarks.slides.stain
    max_steps_per_epoch: int | None = None
    feature_extractor: str | None = None  # a registered encoder (None: the Phikon ViTModel path)
    lora_proj: bool = False  # registry encoders: LoRA on the attention output projection too
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation (a registry encoder's own)
    std: tuple[float, ...] = IMAGENET_STD


@dataclass
class FinetuneResult:
    """What a run measured and where it wrote its outputs."""

    mode: str
    n_trainable: int
    n_total: int
    trainable_percent: float
    best_epoch: int
    val_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    output_dir: str | None = None


# --------------------------------------------------------------------------- backbone


def random_vit_config(
    hidden_size: int = 768,
    num_hidden_layers: int = 12,
    num_attention_heads: int = 12,
    image_size: int = 224,
    patch_size: int = 16,
):
    """A ViTConfig with Phikon's structure (the exporter's config.json: eps 1e-6, qkv bias)."""
    from transformers import ViTConfig

    return ViTConfig(**hf_vit_config(hidden_size, num_hidden_layers, num_attention_heads,
                                     patch_size=patch_size, img_size=image_size))


def load_vit_backbone(
    weights_path: str | Path | None,
    pretrained: bool = True,
    encoder: str = "teacher",
    vit_kwargs: dict[str, Any] | None = None,
    num_heads: int | None = None,
) -> nn.Module:
    """Return a ``transformers.ViTModel`` (no pooling layer).

    ``weights_path`` is an owkin/phikon-style folder (``config.json`` + weights) or an iBOT
    ``.pth`` checkpoint. Random weights need ``pretrained=False``; they are never a fallback.
    An iBOT checkpoint does not record its attention heads: standard ViT widths are known,
    other widths need ``num_heads``.
    """
    from transformers import ViTModel

    if weights_path is None:
        if pretrained:
            raise ValueError(
                "finetune: weights_path is required for a pretrained backbone "
                "(an owkin/phikon-style folder or an iBOT .pth); pass pretrained=false for "
                "random weights"
            )
        return ViTModel(random_vit_config(**(vit_kwargs or {})), add_pooling_layer=False)
    from rl_benchmarks.models.feature_extractors.hf import export_hf, load_hf_vit

    path = Path(weights_path)
    if not path.exists():
        raise FileNotFoundError(f"finetune: weights_path {path} does not exist")
    if path.is_dir():  # strict, local-only loading, as for the phikon_hf extractor
        return load_hf_vit(path)
    # An iBOT checkpoint: convert it through the HF exporter, in a temporary folder.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(path, tmp, encoder=encoder,
                  **({} if num_heads is None else {"num_heads": int(num_heads)}))
        return load_hf_vit(tmp)


class ViTClassifier(nn.Module):
    """A ViT backbone and a linear ``classifier`` on the CLS token of the last layer."""

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.config.hidden_size, n_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(pixel_values=pixel_values).last_hidden_state
        return self.classifier(hidden[:, 0])


def lora_target_modules(backbone: nn.Module) -> list[str]:
    """The names of the query and value projections in this transformers version."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    for pair in _QV_NAMES:
        if set(pair) <= leaf_names:
            return list(pair)
    raise ValueError("finetune: no query/value projections found in the backbone")


def check_image_size(backbone: nn.Module, image_size: int) -> None:
    """The tiles are resized to ``image_size``; a ViTModel takes only the size its position
    embeddings were made for (``config.image_size``). :func:`train` checks it before it
    reads any tile, so a mismatch is one line naming the key instead of a crash in the
    first batch."""
    expected = getattr(getattr(backbone, "config", None), "image_size", None)
    if expected is None:
        return
    expected = int(expected[0] if isinstance(expected, (list, tuple)) else expected)
    if int(image_size) != expected:
        raise ValueError(f"finetune: image_size={image_size} does not fit the backbone, whose "
                         f"position embeddings are for {expected}x{expected} images: pass "
                         f"image_size={expected}")


def build_model(backbone: nn.Module, n_classes: int, cfg: FinetuneConfig) -> nn.Module:
    """Wrap ``backbone`` for ``cfg.mode``: LoRA adapters on q/v + head, or a frozen linear probe."""
    model = ViTClassifier(backbone, n_classes)
    if cfg.mode == "linear":
        model.backbone.requires_grad_(False)
        return model
    if cfg.mode != "lora":
        raise ValueError(f"finetune: mode must be 'lora' or 'linear', got {cfg.mode!r}")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(backbone),
        modules_to_save=["classifier"],
        bias="none",
    )
    return get_peft_model(model, lora)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's saved-module copies count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for name, p in model.named_parameters():
        if "original_module" in name:  # peft keeps a frozen copy of modules_to_save
            continue
        total += p.numel()
    return trainable, total


def expected_lora_trainable(hidden: int, n_layers: int, r: int, n_classes: int) -> int:
    """LoRA on q and v of every layer (A: r×hidden, B: hidden×r) plus the linear head."""
    return n_layers * 2 * (2 * r * hidden) + hidden * n_classes + n_classes


# --------------------------------------------------------------------------- data


class TileImageDataset(Dataset):
    """Images listed in a frame with ``image_path`` and integer ``label`` columns."""

    def __init__(self, frame: pd.DataFrame, transform):
        self.paths = frame["image_path"].astype(str).tolist()
        self.labels = frame["label"].astype(int).to_numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.paths[index]) as img:
                image = img.convert("RGB")
        except OSError as exc:
            raise OSError(f"finetune: cannot read tile {self.paths[index]}: {exc}") from exc
        return self.transform(image), int(self.labels[index])


def make_transforms(image_size: int, train: bool, augment: bool = True, stain_jitter: float = 0.0,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """The tutorial's transforms: RandomResizedCrop + flip for training, Resize + CenterCrop
    for evaluation, then normalisation by ``mean``/``std`` (ImageNet's, or a registry
    encoder's). ``stain_jitter > 0`` adds HED stain jitter of that strength to training
    images (half of them; :mod:`rl_benchmarks.slides.stain`)."""
    from torchvision import transforms as T

    from rl_benchmarks.slides.stain import RandomStainJitter

    jitter = [RandomStainJitter(stain_jitter)] if train and augment and stain_jitter > 0 else []
    norm = [T.ToTensor(), *jitter, T.Normalize(tuple(mean), tuple(std))]
    if train and augment:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *norm])


def split_frame(
    frame: pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Draw stratified train/valid/test parts with a seed (used when no split is given)."""
    from sklearn.model_selection import train_test_split

    if len(fractions) != 3 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"finetune: split fractions must be 3 numbers summing to 1, "
                         f"got {fractions}")
    labels = frame["label"].to_numpy()
    strat = labels if np.bincount(labels).min() >= 3 else None
    rest, test = train_test_split(
        frame, test_size=fractions[2], random_state=seed, stratify=strat
    )
    strat_rest = rest["label"].to_numpy() if strat is not None else None
    if strat_rest is not None and np.bincount(strat_rest).min() < 2:
        strat_rest = None
    train, valid = train_test_split(
        rest,
        test_size=fractions[1] / (fractions[0] + fractions[1]),
        random_state=seed,
        stratify=strat_rest,
    )
    return {"train": train, "valid": valid, "test": test}


# --------------------------------------------------------------------------- training


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto``: bf16 (or fp16 where bf16 is unsupported) autocast on CUDA, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32"):
    """Logits and labels of a loader, in order."""
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        with autocast(device, precision):
            out = model(images.to(device, non_blocking=True))
        logits.append(out.float().cpu())
        labels.append(y)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 of the argmax predictions."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    pred = logits.argmax(1)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, average="macro")),
    }


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def train(
    model: nn.Module,
    splits: dict[str, pd.DataFrame],
    cfg: FinetuneConfig,
    progress: bool = True,
) -> tuple[nn.Module, FinetuneResult]:
    """Train with AdamW, keep the best epoch by validation accuracy, score the test split.
    ``cfg.image_size`` is checked against the backbone first (:func:`check_image_size`)."""
    from tqdm.auto import tqdm

    backbone = getattr(model, "backbone", None)  # ViTClassifier, or peft's wrapper of one
    if backbone is not None:
        check_image_size(backbone, cfg.image_size)
    encoder_size = getattr(model, "encoder_tile_size", None)  # EncoderClassifier
    if encoder_size is not None:
        check_encoder_image_size(getattr(model, "encoder_name", "the encoder"), encoder_size,
                                 cfg.image_size)
    set_seed(cfg.seed)
    device = parse_device(cfg.device).primary
    model.to(device)
    pin = device.type == "cuda"
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        TileImageDataset(splits["train"], make_transforms(cfg.image_size, True, cfg.augment, cfg.stain_jitter,
                                                          cfg.mean, cfg.std)),
        batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
        pin_memory=pin, generator=gen, drop_last=False,
    )
    eval_tf = make_transforms(cfg.image_size, False, mean=cfg.mean, std=cfg.std)
    val_loader = DataLoader(TileImageDataset(splits["valid"], eval_tf), batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers, pin_memory=pin)
    test_loader = DataLoader(TileImageDataset(splits["test"], eval_tf), batch_size=cfg.batch_size,
                             num_workers=cfg.num_workers, pin_memory=pin)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    precision = resolve_precision(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss()
    n_trainable, n_total = count_parameters(model)

    best_acc, best_epoch, best_state = -1.0, -1, None
    val_acc, train_loss = [], []
    for epoch in range(cfg.num_epochs):
        model.train()
        losses = []
        bar = tqdm(train_loader, desc=f"finetune epoch {epoch + 1}/{cfg.num_epochs}",
                   unit="batch", disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            with autocast(device, precision):
                logits = model(images.to(device, non_blocking=True))
                loss = criterion(logits.float(), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        train_loss.append(float(np.mean(losses)) if losses else float("nan"))
        logits, labels = predict(model, val_loader, device, precision)
        acc = classification_metrics(labels, logits)["accuracy"]
        val_acc.append(acc)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, _trainable_state(model)
        logger.info("epoch %d: train loss %.4f, val accuracy %.4f", epoch + 1, train_loss[-1], acc)

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    logits, labels = predict(model, test_loader, device, precision)
    result = FinetuneResult(
        mode=cfg.mode,
        n_trainable=n_trainable,
        n_total=n_total,
        trainable_percent=100.0 * n_trainable / max(n_total, 1),
        best_epoch=best_epoch,
        val_accuracy=val_acc,
        train_loss=train_loss,
        test_metrics=classification_metrics(labels, logits),
    )
    return model, result


# --------------------------------------------------------------------------- saving


def save_outputs(
    model: nn.Module,
    result: FinetuneResult,
    cfg: FinetuneConfig,
    output_dir: str | Path,
    extra_record: dict[str, Any] | None = None,
) -> Path:
    """Write the adapter (LoRA) or head (linear), the merged HF backbone, and ``results.json``.

    The merged folder (``merged_hf/``) is an owkin/phikon-style folder that
    ``create_extractor("phikon_hf", weights_path=...)`` loads as a feature extractor.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "lora":
        model.save_pretrained(str(out / "adapter"))
        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = model
    head = merged.classifier.state_dict()
    with io.atomic_open(out / "classifier_head.pt", "wb") as f:
        torch.save(head, f)
    merged.backbone.save_pretrained(str(out / "merged_hf"))
    io.write_json(out / "merged_hf" / "preprocessor_config.json",
                  hf_preprocessor_config(cfg.image_size))
    result.output_dir = str(out)
    record = {"result": asdict(result), "config": asdict(cfg), **(extra_record or {})}
    io.write_json(out / "results.json", record)
    return out


def load_adapter(backbone: nn.Module, n_classes: int, adapter_dir: str | Path) -> nn.Module:
    """Rebuild a fine-tuned LoRA classifier from ``backbone`` and a saved adapter folder."""
    from peft import PeftModel

    return PeftModel.from_pretrained(ViTClassifier(backbone, n_classes), str(adapter_dir))


# --------------------------------------------------------------------------- the stage


def load_tile_frame(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The tiles a ``finetune`` config names, and the class names.

    ``cfg.data`` is an ImageFolder root or a CSV (``image_path``, ``label``, optional
    ``split``; relative paths resolved against the CSV's folder); ``cfg.tile_dataset`` a
    reference dataset (``nct_crc`` or ``camelyon17_wilds``) read under ``cfg.data_dir``.
    The frame has ``image_path``, ``label`` (codes 0..K-1 in the sorted order of the class
    names, or of the label values when the loader gives no names) and optionally ``split``.
    """
    if cfg.data:
        path = Path(cfg.data)
        if path.is_dir():
            from rl_benchmarks.datasets import load_image_folder

            frame = load_image_folder(path)
        elif path.is_file():
            from rl_benchmarks.datasets.validation import check_label_spellings, read_table

            frame = read_table(path, "finetune data")
            missing = {"image_path", "label"} - set(frame.columns)
            if missing:
                raise ValueError(f"finetune: {path} lacks the column(s) {sorted(missing)}")
            check_label_spellings(frame["label"], path, "label")
            frame["image_path"] = [
                str(p if Path(p).is_absolute() else path.parent / p) for p in frame["image_path"]
            ]
        else:
            raise FileNotFoundError(f"finetune: data={path} does not exist")
    elif cfg.tile_dataset:
        from rl_benchmarks.datasets import load_dataset

        names = {"nct_crc": "NCT-CRC", "camelyon17_wilds": "CAMELYON17-WILDS"}
        if cfg.tile_dataset not in names:
            raise ValueError(f"finetune: tile_dataset must be one of {sorted(names)}")
        base = names[cfg.tile_dataset]
        parts = {"TRAIN": "train", "VALID": "valid"}
        if base == "CAMELYON17-WILDS":
            parts["TEST"] = "test"
        data_dir = cfg.get("data_dir") or None  # else $RLB_DATA_DIR / conf.yaml
        frames = []
        for cohort, split in parts.items():
            f = load_dataset(f"{base}_{cohort}", data_dir=data_dir)
            f = f.assign(split=split)
            frames.append(f)
        frame = pd.concat(frames, ignore_index=True)
        if base == "NCT-CRC":  # the tutorial: a validation part drawn from train, test = VAL-7K
            frame.loc[frame.split == "valid", "split"] = "test"
    else:
        raise ValueError("finetune: give data=<folder or CSV> or tile_dataset=<name>")
    # Class names when the loader gives them (ImageFolder), else the label values; codes
    # 0..K-1 follow their sorted order.
    source = frame["class_name"] if "class_name" in frame else frame["label"]
    values = sorted(source.unique())
    frame["label"] = source.map({v: i for i, v in enumerate(values)}).astype(int)
    classes = [str(v) for v in values]
    return frame, classes


def make_splits(frame: pd.DataFrame, cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Use the frame's ``split`` column when present, else draw stratified parts with the seed.

    With a given split but no validation part (e.g. NCT-CRC), the validation part is drawn
    as half of the training part, as in the reference tutorial (1000 tiles -> 500/500).
    ``cfg.max_train_tiles`` caps the training part (seeded draw). An empty part is a
    one-line ValueError.
    """
    from sklearn.model_selection import train_test_split

    if "split" in frame and frame["split"].notna().all():
        splits = {s: frame[frame.split == s] for s in ("train", "valid", "test")}
        if cfg.max_train_tiles and len(splits["train"]) > cfg.max_train_tiles:
            splits["train"] = splits["train"].sample(cfg.max_train_tiles, random_state=cfg.seed)
        if len(splits["valid"]) == 0:
            splits["train"], splits["valid"] = train_test_split(
                splits["train"], test_size=0.5, random_state=cfg.seed
            )
    else:
        splits = split_frame(frame, tuple(cfg.split_fractions), cfg.seed)
        if cfg.max_train_tiles and len(splits["train"]) > cfg.max_train_tiles:
            splits["train"] = splits["train"].sample(cfg.max_train_tiles, random_state=cfg.seed)
    for name, part in splits.items():
        if len(part) == 0:
            raise ValueError(f"finetune: the {name} split is empty")
    return splits


def config_of(cfg: DictConfig) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a ``finetune`` command config."""
    return FinetuneConfig(
        mode=cfg.mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, num_epochs=cfg.num_epochs,
        image_size=cfg.image_size, precision=cfg.precision, device=str(cfg.device),
        num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment,
        stain_jitter=cfg.stain_jitter,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        feature_extractor=cfg.get("feature_extractor") or None,
        lora_proj=bool(cfg.get("lora_proj", False)),
    )


def run(
    cfg: DictConfig,
    on_start: Callable[[FinetuneConfig, list[str], dict[str, pd.DataFrame]], None] | None = None,
) -> FinetuneResult:
    """Run ``finetune`` as the command config ``cfg`` (a DictConfig) describes: load the
    tiles and splits, build the backbone and model, train, and write the outputs under
    ``cfg.output_dir`` (:func:`save_outputs`).

    ``on_start(run_config, classes, splits)`` is called once the model is built, before
    training. Bad input raises a one-line ``ValueError`` / ``FileNotFoundError``. The
    result holds the class names and the output folder."""
    from omegaconf import OmegaConf

    frame, classes = load_tile_frame(cfg)
    splits = make_splits(frame, cfg)
    run_cfg = config_of(cfg)
    if run_cfg.feature_extractor:
        return _run_encoder(cfg, run_cfg, classes, splits, on_start)
    vit_kwargs = dict(OmegaConf.to_container(cfg.vit)) | {"image_size": cfg.image_size}
    backbone = load_vit_backbone(cfg.weights_path, cfg.pretrained, cfg.encoder, vit_kwargs,
                                 num_heads=OmegaConf.select(cfg, "num_heads"))
    model = build_model(backbone, len(classes), run_cfg)
    if on_start is not None:
        on_start(run_cfg, classes, splits)
    model, result = train(model, splits, run_cfg)
    result.classes = classes
    save_outputs(model, result, run_cfg, cfg.output_dir, extra_record={
        "weights_path": cfg.weights_path, "pretrained": cfg.pretrained,
        "hydra_config": OmegaConf.to_container(cfg),
    })
    return result


# --------------------------------------------------------------------------- registry encoders

#: LoRA targets per body: timm ViT blocks (fused qkv; the output projection optional) and
#: transformers ViT/Dinov2 attention (query/value; the output projection optional).
TIMM_QKV, TIMM_PROJ = "attn.qkv", "attn.proj"
_HF_PROJ_NAMES = ("attention.o_proj", "attention.output.dense")


class EncoderClassifier(nn.Module):
    """A registry extractor's network (normalised images -> features by the encoder's output
    rule: CLS, CLS ⊕ mean, CONCH's pooler) and a linear ``classifier`` on those features."""

    def __init__(self, network: nn.Module, feature_dim: int, n_classes: int,
                 tile_size: int | None = None, name: str = "encoder") -> None:
        super().__init__()
        self.backbone = network
        self.classifier = nn.Linear(int(feature_dim), n_classes)
        #: the size :func:`train` checks ``image_size`` against (the encoder's tile size)
        self.encoder_tile_size = None if tile_size is None else int(tile_size)
        self.encoder_name = name

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(pixel_values))


def load_encoder(
    name: str,
    weights_path: str | Path | None,
    pretrained: bool = True,
    output: str | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
):
    """The registry extractor ``name`` in fp32 on the CPU, built as for extraction
    (:func:`~rl_benchmarks.models.feature_extractors.create_extractor`: strict weights
    loading, output rule, mean/std, tile size). ``encoder_kwargs`` go to the builder (e.g.
    ``depth=1, img_size=32`` for tiny test models). Only extractors whose forward is their
    network's can be fine-tuned (every ViT and CNN of the registry)."""
    from rl_benchmarks.models.feature_extractors import create_extractor

    kwargs = dict(encoder_kwargs or {})
    if output:
        kwargs["output"] = output
    ext = create_extractor(name, weights_path=weights_path, pretrained=pretrained, device=-1,
                           precision="fp32", **kwargs)
    if ext._network() is None:
        raise ValueError(f"finetune: {name} has a custom forward and cannot be fine-tuned here")
    return ext


def check_encoder_image_size(name: str, tile_size: int, image_size: int) -> None:
    """``image_size`` must be the encoder's tile size (the size extraction feeds it)."""
    if int(image_size) != int(tile_size):
        raise ValueError(f"finetune: image_size={image_size} does not fit {name}, whose tile size is "
                         f"{tile_size}: pass image_size={tile_size}")


def encoder_lora_targets(network: nn.Module, proj: bool = False) -> list[str]:
    """LoRA target modules of a registry network: ``attn.qkv`` (+ ``attn.proj``) for timm ViT
    blocks, the query/value projections (+ the attention output) for transformers models."""
    linear = {name for name, m in network.named_modules() if isinstance(m, nn.Linear)}
    if any(n == TIMM_QKV or n.endswith("." + TIMM_QKV) for n in linear):
        return [TIMM_QKV, TIMM_PROJ] if proj else [TIMM_QKV]
    leaves = {n.rsplit(".", 1)[-1] for n in linear}
    for pair in _QV_NAMES:
        if set(pair) <= leaves:
            extra = [p for p in _HF_PROJ_NAMES if any(n.endswith("." + p) for n in linear)]
            return list(pair) + (extra[:1] if proj else [])
    raise ValueError("finetune: mode=lora needs a ViT body (timm blocks with attn.qkv or transformers "
                     "query/value projections); this encoder has none: use mode=linear")


def build_encoder_model(ext: Any, n_classes: int, cfg: FinetuneConfig) -> nn.Module:
    """Wrap a registry extractor for ``cfg.mode``: a frozen backbone + linear head, or LoRA
    adapters (:func:`encoder_lora_targets`) + the head."""
    model = EncoderClassifier(ext.feature_extractor, ext.feature_dim, n_classes, ext.tile_size, ext.name)
    model.backbone.requires_grad_(False)
    if cfg.mode == "linear":
        return model
    if cfg.mode != "lora":
        raise ValueError(f"finetune: mode must be 'lora' or 'linear', got {cfg.mode!r}")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=encoder_lora_targets(model.backbone, cfg.lora_proj),
                      modules_to_save=["classifier"], bias="none")
    return get_peft_model(model, lora)


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    with io.atomic_open(path, "wb") as f:
        f.write(data)


def save_merged_backbone(network: nn.Module, out: Path, image_size: int,
                         mean: Sequence[float], std: Sequence[float]) -> Path:
    """Write a (merged) registry network where the registry loads it back; returns the path
    to pass as ``weights_path``. transformers bodies: a folder (``save_pretrained``,
    safetensors); timm/CONCH bodies: ``<out>/model.safetensors`` with the published key
    names (the token-output wrapper is not part of them)."""
    inner = getattr(network, "model", network)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(inner, "save_pretrained"):
        inner.save_pretrained(str(out), safe_serialization=True)
        io.write_json(out / "preprocessor_config.json", hf_preprocessor_config(image_size, mean, std))
        return out
    _save_safetensors(inner.state_dict(), out / "model.safetensors")
    return out / "model.safetensors"


def save_encoder_outputs(
    model: nn.Module,
    result: FinetuneResult,
    cfg: FinetuneConfig,
    output_dir: str | Path,
    encoder_record: dict[str, Any],
    extra_record: dict[str, Any] | None = None,
) -> Path:
    """Outputs of a registry-encoder run, all safetensors: ``adapter/`` (LoRA, peft format),
    ``merged/`` (:func:`save_merged_backbone`), ``classifier_head.safetensors`` and
    ``results.json`` (with an ``encoder`` entry: name, builder keywords, extractor record,
    the merged weights' path). :func:`load_encoder_classifier` reloads them."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "lora":
        model.save_pretrained(str(out / "adapter"), safe_serialization=True)
        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = model
    _save_safetensors(merged.classifier.state_dict(), out / "classifier_head.safetensors")
    weights = save_merged_backbone(merged.backbone, out / "merged", cfg.image_size, cfg.mean, cfg.std)
    result.output_dir = str(out)
    encoder = {**encoder_record, "merged_weights": str(weights.relative_to(out)),
               "lora_targets": (list(model.peft_config["default"].target_modules)
                                if cfg.mode == "lora" else [])}
    record = {"result": asdict(result), "config": asdict(cfg), "encoder": encoder, **(extra_record or {})}
    io.write_json(out / "results.json", record)
    return out


def load_encoder_classifier(output_dir: str | Path) -> nn.Module:
    """The fine-tuned classifier of a registry-encoder run: the merged backbone rebuilt
    through the registry (same name, builder keywords and output rule) and the head."""
    import json

    from safetensors.torch import load_file

    out = Path(output_dir)
    record = json.loads((out / "results.json").read_text())
    enc = record["encoder"]
    ext = load_encoder(enc["name"], out / enc["merged_weights"], pretrained=True,
                       output=enc.get("output"), encoder_kwargs=enc.get("kwargs"))
    model = EncoderClassifier(ext.feature_extractor, ext.feature_dim, len(record["result"]["classes"]),
                              ext.tile_size, ext.name)
    model.classifier.load_state_dict(load_file(str(out / "classifier_head.safetensors")))
    return model.eval()


def load_encoder_adapter(ext: Any, n_classes: int, adapter_dir: str | Path) -> nn.Module:
    """Rebuild a LoRA classifier from a registry extractor (built from the run's starting
    weights) and a saved ``adapter/`` folder."""
    from peft import PeftModel

    base = EncoderClassifier(ext.feature_extractor, ext.feature_dim, n_classes, ext.tile_size, ext.name)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def _run_encoder(
    cfg: DictConfig,
    run_cfg: FinetuneConfig,
    classes: list[str],
    splits: dict[str, pd.DataFrame],
    on_start: Callable[[FinetuneConfig, list[str], dict[str, pd.DataFrame]], None] | None,
) -> FinetuneResult:
    """:func:`run` for ``feature_extractor=<registered name>``."""
    from omegaconf import OmegaConf

    kwargs = dict(OmegaConf.to_container(cfg.encoder_kwargs) or {}) if cfg.get("encoder_kwargs") else {}
    output = cfg.get("output") or None
    set_seed(cfg.seed)  # random-init (pretrained=false) weights are reproducible
    ext = load_encoder(run_cfg.feature_extractor, cfg.weights_path, cfg.pretrained, output, kwargs)
    check_encoder_image_size(ext.name, ext.tile_size, run_cfg.image_size)
    run_cfg.mean, run_cfg.std = tuple(ext.mean), tuple(ext.std)
    model = build_encoder_model(ext, len(classes), run_cfg)
    if on_start is not None:
        on_start(run_cfg, classes, splits)
    model, result = train(model, splits, run_cfg)
    result.classes = classes
    record = ext.record()
    encoder = {"name": run_cfg.feature_extractor, "output": ext.extra.get("output", output),
               "kwargs": kwargs, "record": record}
    save_encoder_outputs(model, result, run_cfg, cfg.output_dir, encoder, extra_record={
        "weights_path": cfg.weights_path, "pretrained": cfg.pretrained,
        "hydra_config": OmegaConf.to_container(cfg),
    })
    return result
