"""Base classes of the tile feature extractors (the reference's ``core.py`` contract).

An :class:`Extractor` keeps its network in ``self.feature_extractor``; that module's
``forward`` maps a normalised batch ``(B, 3, H, W)`` to features ``(B, D)``. Calling the
extractor runs it without gradients and returns float32. With ``precision="bf16"`` on the
CPU, networks built from timm ViT blocks run on the fast path of
:mod:`~rl_benchmarks.models.feature_extractors.fast_inference` (bf16 weights, bmm attention,
oneDNN-fused linears); other networks, and GPUs, run under ``torch.autocast``. The path that
ran is in :meth:`Extractor.record` (``inference_path``).
:class:`ParallelExtractor` wraps an extractor for one device or several GPUs; with several
GPUs the ``DataParallel`` wrapper is the module that is called (the reference built it but
kept calling the unwrapped network).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD  # re-exported here
from rl_benchmarks.models.feature_extractors.fast_inference import (
    PATH_AUTOCAST,
    PATH_FAST,
    build_fast_module,
    count_fusable_blocks,
    onednn_fusions_available,
    select_path,
)
from rl_benchmarks.utils.device import DeviceSpec, autocast, parse_device, parse_precision


def prepare_module(module: nn.Module, gpu: Any = None) -> tuple[nn.Module, str]:
    """Place ``module`` on the device(s) named by ``gpu``; return ``(module, device_str)``.

    As in the reference: -1 or no CUDA → ``"cpu"``; an int K → ``"cuda:K"``; None or a
    list → ``DataParallel`` over those GPUs, inputs on the first one. The module is put in
    eval mode with ``requires_grad_(False)``.
    """
    if isinstance(gpu, str) and gpu.startswith("cuda:"):
        gpu = int(gpu.split(":", 1)[1])
    spec = parse_device(gpu)
    device = spec.primary
    module = module.to(device)
    if spec.type == "cuda" and (gpu is None or not isinstance(gpu, int)):
        module = nn.DataParallel(module, device_ids=list(spec.ids), output_device=spec.ids[0])
    module.eval()
    module.requires_grad_(False)
    return module, str(device)


class Extractor(nn.Module):
    """Base class: ``transform`` (PIL → normalised tensor), ``feature_dim``, ``tile_size``,
    ``mpp``, ``name`` and ``__call__(images (B,3,H,W)) -> (B, D)`` float32.

    Subclasses set ``self.feature_extractor`` to a module whose forward returns ``(B, D)``
    (or override :meth:`postprocess`). Metadata are keyword arguments so that the
    reference's bare ``Extractor()`` still works.
    """

    #: Fast path: keep the residual stream in fp32 (LayerNorms in fp32, matmuls still bf16).
    #: Closer to fp32 features (cosine 0.99998 vs 0.99995 on ViT-B, random weights), a few
    #: more memory passes per block; off by default.
    fast_residual_fp32: bool = False

    def __init__(
        self,
        *,
        name: str | None = None,
        feature_dim: int | None = None,
        tile_size: int | None = None,
        mpp: float | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        precision: str = "fp32",
        weights_path: str | os.PathLike | None = None,
        pretrained: bool = True,
        extra: dict[str, Any] | None = None,
        inference_path: str = "auto",
    ) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.feature_dim = feature_dim
        self.tile_size = tile_size
        self.mpp = mpp
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"{self.name}: mean and std need 3 values (std > 0), "
                             f"got mean={mean!r} std={std!r}")
        self.precision = parse_precision(precision)
        self.weights_path = None if weights_path is None else str(weights_path)
        self.pretrained = bool(pretrained)
        self.extra: dict[str, Any] = dict(extra or {})
        self._sha256: str | None = None
        #: "auto"/"fast" (the fast path on the CPU, fp32 and bf16) or "plain" (never).
        self.inference_path = inference_path
        object.__setattr__(self, "_fast_cache", None)  # (key, FastModule); not a submodule

    # ----------------------------------------------------------------- preprocessing
    @property
    def transform(self) -> transforms.Compose:
        """PIL image (or HWC uint8 array) → ``ToTensor`` → ``Normalize(mean, std)``; no resize."""
        return transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize(mean=self.mean, std=self.std)])

    def normalize_uint8(self, batch: torch.Tensor | np.ndarray,
                        channels_last: bool | None = None) -> torch.Tensor:
        """Batched ``transform`` for uint8 tiles ``(B,H,W,3)`` or ``(B,3,H,W)``.

        Returns float32 ``(B,3,H,W)`` on the batch's device, computed with the same
        operations as ToTensor + Normalize (so results are identical). ``channels_last``
        settles the layout when both the 2nd and last axes have size 3.
        """
        x = torch.as_tensor(batch)
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize_uint8 expects uint8 tiles, got {x.dtype}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4:
            raise ValueError(f"normalize_uint8 expects (B,H,W,3) or (B,3,H,W), got {tuple(x.shape)}")
        if channels_last is None:
            if x.shape[-1] == 3 and x.shape[1] != 3:
                channels_last = True
            elif x.shape[1] == 3 and x.shape[-1] != 3:
                channels_last = False
            elif x.shape[1] == 3 and x.shape[-1] == 3:
                raise ValueError(f"ambiguous layout {tuple(x.shape)}: pass channels_last=")
            else:
                raise ValueError(f"no axis of size 3 (RGB) in {tuple(x.shape)}")
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.contiguous().to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    # ------------------------------------------------------------------ inference
    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a parameter-less extractor)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def postprocess(self, output: Any) -> torch.Tensor:
        """Turn ``feature_extractor``'s output into ``(B, D)`` (identity by default)."""
        return output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw forward (no autocast, no gradient handling): features ``(B, D)``."""
        fe = getattr(self, "feature_extractor", None)
        if fe is None:
            raise NotImplementedError(f"{type(self).__name__} defines no feature_extractor")
        return self.postprocess(fe(images))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` in float32 for normalised images ``(B, 3, H, W)``."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name}: expected a tensor (B,3,H,W), got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B,3,H,W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            raise TypeError(f"{self.name}: got uint8 images; normalise them first "
                            f"(extractor.normalize_uint8(batch) or extractor.transform)")
        device = self.device
        images = images.to(device, non_blocking=True)
        if images.dtype != torch.float32:
            images = images.float()
        with torch.no_grad():
            fast = self._fast_module() if self.active_inference_path() == PATH_FAST else None
            if fast is not None:
                out = self.postprocess(fast(images))
            else:
                with autocast(device, self.precision):
                    out = self.forward(images)
        return out.float()

    # ------------------------------------------------------------------ fast path
    def _network(self) -> nn.Module | None:
        """The network the fast path may convert (None: this extractor's forward is custom)."""
        if type(self).forward is not Extractor.forward:
            return None
        return getattr(self, "feature_extractor", None)

    def active_inference_path(self) -> str:
        """``"fast"``, ``"autocast"`` or ``"plain"``: the path a call runs now (see
        :func:`~rl_benchmarks.models.feature_extractors.fast_inference.select_path`)."""
        return select_path(self._network(), self.precision, self.device, self.inference_path)

    def _fast_module(self) -> nn.Module:
        """The fast-path copy of the network, rebuilt when the precision, the device or any
        weight (``load_state_dict``, in-place edits) has changed since it was built."""
        network = self._network()
        params = list(network.parameters())
        key = (self.precision, str(self.device), id(network), bool(self.fast_residual_fp32),
               tuple((p.data_ptr(), p._version) for p in params))
        cached = self._fast_cache
        if cached is None or cached[0] != key:
            object.__setattr__(self, "_fast_cache", None)  # free the old copy first
            fast = build_fast_module(network, self.precision, residual_fp32=bool(self.fast_residual_fp32))
            object.__setattr__(self, "_fast_cache", (key, fast))
            cached = self._fast_cache
        return cached[1]

    def inference_record(self) -> dict[str, Any]:
        """Which path runs, and what it does, for the JSON record."""
        path = self.active_inference_path()
        if path == PATH_FAST:
            network = self._network()
            fusions, res32 = onednn_fusions_available(), bool(self.fast_residual_fp32)
            detail = (f"{self.precision} weights; {count_fusable_blocks(network)} timm ViT block(s) "
                      f"with bmm attention"
                      + (", oneDNN-fused bias+erf-GELU" if fusions else "")
                      + (" and residual adds" if fusions and not res32 else "")
                      + ("; fp32 residual stream" if res32 else ""))
        elif path == PATH_AUTOCAST:
            detail = f"torch.autocast({self.precision})"
        else:
            detail = "module as built, fp32"
        return {"inference_path": path, "inference_detail": detail}

    def extract_features_as_numpy(self, images: torch.Tensor) -> np.ndarray:
        """Features as a float32 numpy array (reference helper)."""
        return self(images).detach().cpu().numpy()

    def extract_feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("feature maps are not exposed by this extractor")

    def place(self, device: Any = -1) -> Extractor:
        """Move to ``device`` (see :func:`rl_benchmarks.utils.device.parse_device`).

        One device: returns ``self`` moved there, in eval mode. Several GPUs: returns a
        :class:`ParallelExtractor` that really splits each batch across them.
        """
        spec = parse_device(device)
        if spec.is_multi_gpu:
            return ParallelExtractor(self, gpu=list(spec.ids))
        self.to(spec.primary)
        self.eval()
        self.requires_grad_(False)
        return self

    # --------------------------------------------------------------------- record
    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file (computed once), or ``"random-init"``."""
        if not self.pretrained or self.weights_path is None:
            return "random-init"
        if self._sha256 is None:
            from rl_benchmarks.utils.io import sha256_file

            path = Path(self.weights_path)
            self._sha256 = sha256_file(_weights_file(path))
        return self._sha256

    def record(self) -> dict[str, Any]:
        """What the JSON record of an extraction says about this extractor."""
        pretrained = self.pretrained and self.weights_path is not None
        rec = {
            "name": self.name,
            "class": type(self).__name__,
            "weights": self.weights_path if pretrained else "random-init",
            "weights_sha256": self.weights_sha256,
            "pretrained": pretrained,
            "feature_dim": self.feature_dim,
            "tile_size": self.tile_size,
            "mpp": self.mpp,
            "precision": self.precision,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        rec.update(self.inference_record())
        rec.update(self.extra)
        return rec

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim}, "
                f"tile_size={self.tile_size}, mpp={self.mpp}, precision={self.precision!r}, "
                f"weights={self.weights_path if self.pretrained else 'random-init'!r})")


def _weights_file(path: Path) -> Path:
    """The file to hash: ``path`` itself, or the weights file inside a HF folder."""
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin inside")
    return path


class ParallelExtractor(Extractor):
    """Run ``module`` (an :class:`Extractor`) on ``gpu``: -1 (CPU), K, a list, or None (all).

    With several GPUs the batch is split across them by ``DataParallel``, which is the
    module actually called. Metadata, ``transform`` and ``record()`` are the module's.
    """

    def __init__(self, module: Extractor, gpu: Any = None, precision: str | None = None) -> None:
        super().__init__(
            name=getattr(module, "name", type(module).__name__),
            feature_dim=getattr(module, "feature_dim", None),
            tile_size=getattr(module, "tile_size", None),
            mpp=getattr(module, "mpp", None),
            mean=getattr(module, "mean", IMAGENET_MEAN),
            std=getattr(module, "std", IMAGENET_STD),
            precision=precision or getattr(module, "precision", "fp32"),
        )
        if isinstance(gpu, str) and gpu.startswith("cuda:"):
            gpu = int(gpu.split(":", 1)[1])
        if not hasattr(module, "feature_extractor"):
            raise TypeError(f"{type(module).__name__} has no feature_extractor to parallelise")
        self.spec: DeviceSpec = parse_device(gpu)
        # Keep the wrapped extractor out of the module tree: its network is registered
        # once, through the (possibly DataParallel) wrapper below.
        object.__setattr__(self, "module", module)
        self.inference_path = getattr(module, "inference_path", "auto")
        self.fast_residual_fp32 = bool(getattr(module, "fast_residual_fp32", False))
        parallel, device = prepare_module(module.feature_extractor, gpu)
        self.parallel_module = parallel
        self.device_list = [device]
        module.eval()

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_list[0])

    @property
    def transform(self) -> transforms.Compose:
        return self.module.transform

    def postprocess(self, output: Any) -> torch.Tensor:
        return self.module.postprocess(output)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.postprocess(self.parallel_module(images))

    def _network(self) -> nn.Module | None:
        if type(self.module).forward is not Extractor.forward or isinstance(self.parallel_module, nn.DataParallel):
            return None
        return self.parallel_module

    @property
    def weights_sha256(self) -> str:
        return self.module.weights_sha256

    def record(self) -> dict[str, Any]:
        rec = self.module.record()
        rec["precision"] = self.precision
        rec.update(self.inference_record())
        rec["device"] = str(self.spec)
        return rec

    def place(self, device: Any = -1) -> Extractor:
        return ParallelExtractor(self.module, gpu=device, precision=self.precision)


class ModuleExtractor(Extractor):
    """An :class:`Extractor` around any network whose forward returns ``(B, D)``."""

    def __init__(self, network: nn.Module, **metadata: Any) -> None:
        super().__init__(**metadata)
        self.feature_extractor = network
        self.eval()
        self.requires_grad_(False)
