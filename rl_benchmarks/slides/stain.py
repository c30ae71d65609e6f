"""Stain normalisation (Macenko, Reinhard) and stain jitter, batched in torch.

Why this module exists: H&E colour varies between centres, scanners and staining batches,
and a feature extractor sees that variation. Normalising every tile to one target image
removes most of it at extraction time; jittering stains during training makes a model robust
to it instead.

* **Macenko** (Macenko et al., ISBI 2009): optical density ``OD = -log((I + 1) / Io)``; the
  pixels whose OD is at least ``beta`` in every channel (tissue, not glass) span a plane (the
  two leading eigenvectors of their OD covariance); the stain vectors are the directions at
  the ``alpha`` and ``100 - alpha`` angle percentiles in that plane (haematoxylin first);
  concentrations come from least squares; each tile's concentrations are rescaled so that
  their 99th percentile matches the target's, then recomposed with the target's stain
  matrix. Same constants as the reference implementations (Io=240, alpha=1, beta=0.15) and as
  ``torchstain``'s, against which the tests check it.
* **Reinhard** (Reinhard et al., 2001, in CIELAB as ``torchstain`` does): each channel of
  the tile's Lab image is standardised, then given the target's mean and standard deviation.
* **Stain jitter** (Tellez et al., 2018): in haematoxylin-eosin-DAB space (the Ruifrok
  matrix scikit-image uses), each channel is scaled by ``U(1 - sigma, 1 + sigma)`` and
  shifted by ``U(-sigma, sigma)``, per image.

Every operation runs on a batch of tiles on the tiles' device. ``torchstain`` works on one
image at a time, which is why the batched code is ours; Vahadane needs a sparse dictionary
learner (SPAMS) that no maintained, installable library provides, so it is not offered.

A tile with too little tissue for Macenko's statistics (fewer than ``min_tissue_pixels``
pixels above ``beta``) is left unchanged rather than given a degenerate stain matrix; a
*target* without tissue is an error naming the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

METHODS = ("macenko", "reinhard")

#: Macenko's constants (transmitted light, angle percentile, OD threshold).
IO, ALPHA, BETA = 240.0, 1.0, 0.15


class StainTargetError(ValueError):
    """A stain target that cannot be fitted (unreadable, or without tissue)."""


# ------------------------------------------------------------------------------ helpers
def _as_batch(tiles: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 or float tiles ``(B,H,W,3)`` (or one ``(H,W,3)``) as float64/32 ``(B,N,3)``."""
    x = torch.as_tensor(tiles)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"stain normalisation expects RGB tiles (B,H,W,3), got {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.reshape(x.shape[0], -1, 3).to(dtype)


def _masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile (linear interpolation, as numpy.percentile) of ``values[mask]``."""
    filled = torch.where(mask, values, torch.full_like(values, float("nan")))
    return torch.nanquantile(filled, q, dim=-1)


def _to_uint8(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x.clamp(0, 255).round().to(torch.uint8).reshape(shape)


# ------------------------------------------------------------------------------ Macenko
def macenko_stains(pixels: torch.Tensor, alpha: float = ALPHA, beta: float = BETA,
                   io: float = IO) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stain matrices and concentrations of a batch of pixel sets.

    ``pixels``: float ``(B, N, 3)`` RGB in [0, 255]. Returns ``HE`` ``(B, 3, 2)``
    (haematoxylin, eosin columns), concentrations ``C`` ``(B, 2, N)``, their 99th
    percentiles ``maxC`` ``(B, 2)`` and the tissue-pixel count per image ``(B,)``.
    """
    od = -torch.log((pixels + 1) / io)                                 # (B, N, 3)
    tissue = (od >= beta).all(dim=-1)                                   # (B, N)
    count = tissue.sum(dim=1)
    w = tissue.to(od.dtype).unsqueeze(-1)
    n = count.clamp(min=2).to(od.dtype).view(-1, 1, 1)
    mean = (od * w).sum(dim=1, keepdim=True) / n
    centred = (od - mean) * w
    cov = centred.transpose(1, 2) @ centred / (n - 1)                   # (B, 3, 3), np.cov
    _, vecs = torch.linalg.eigh(cov)                                    # ascending eigenvalues
    plane = vecs[:, :, 1:3]                                             # (B, 3, 2)
    # eigh's signs are arbitrary: point the leading direction along positive OD so the
    # angles of the tissue pixels do not straddle +-pi (the percentiles assume they don't)
    sign = torch.where(plane[:, :, 1].sum(dim=1) < 0, -1.0, 1.0).to(od.dtype).view(-1, 1, 1)
    plane = torch.cat([plane[:, :, :1], plane[:, :, 1:] * sign], dim=2)
    that = od @ plane                                                   # (B, N, 2)
    phi = torch.atan2(that[..., 1], that[..., 0])
    lo = _masked_quantile(phi, tissue, alpha / 100)
    hi = _masked_quantile(phi, tissue, 1 - alpha / 100)
    # an image without tissue has no angles: any two directions keep the algebra finite
    # (such images are left unchanged by :func:`normalize`, and refused as targets)
    lo, hi = torch.nan_to_num(lo, nan=0.0), torch.nan_to_num(hi, nan=torch.pi / 2)
    v_lo = plane @ torch.stack([torch.cos(lo), torch.sin(lo)], dim=1).unsqueeze(-1)   # (B, 3, 1)
    v_hi = plane @ torch.stack([torch.cos(hi), torch.sin(hi)], dim=1).unsqueeze(-1)
    h_first = (v_lo[:, 0, 0] > v_hi[:, 0, 0]).view(-1, 1, 1)
    he = torch.where(h_first, torch.cat([v_lo, v_hi], 2), torch.cat([v_hi, v_lo], 2))
    conc = torch.linalg.pinv(he) @ od.transpose(1, 2)                   # (B, 2, N), lstsq
    max_c = torch.quantile(conc, 0.99, dim=-1)                          # every pixel, as Macenko
    return he, conc, max_c, count


# ------------------------------------------------------------------------------ Reinhard
_RGB2XYZ = [[0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227]]
_WHITE = (0.95047, 1.0, 1.08883)  # D65, 2 degrees (scikit-image's default)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``(..., 3)`` → CIELAB (D65), the formulas of ``skimage.color.rgb2lab``."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ torch.tensor(_RGB2XYZ, dtype=rgb.dtype, device=rgb.device).T
    xyz = xyz / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                        200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) → sRGB in [0, 1] (clipped), the inverse of :func:`rgb_to_lab`."""
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device)
    lin = xyz @ torch.linalg.inv(torch.tensor(_RGB2XYZ, dtype=lab.dtype, device=lab.device)).T
    lin = lin.clamp(min=0)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1)


def lab_stats(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean and standard deviation ``(B, 3)`` of the Lab channels of ``(B, N, 3)``."""
    lab = rgb_to_lab(pixels / 255)
    return lab.mean(dim=1), lab.std(dim=1, unbiased=False)


# ------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class StainTarget:
    """A fitted target: the method, its parameters, and the image it came from."""

    method: str
    params: dict[str, Any]
    source: str = ""
    sha256: str = ""
    min_tissue_pixels: int = 64
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        """What the features' JSON record keeps: enough to refit nothing and compare runs."""
        return {"method": self.method, "target": self.source, "target_sha256": self.sha256,
                **{k: np.round(np.asarray(v, dtype=float), 6).tolist() for k, v in self.params.items()}}

    def tensor(self, key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.params[key]), dtype=dtype, device=device)


def _read_image(image: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, str, str]:
    if isinstance(image, np.ndarray):
        arr = image
        return arr, "<array>", hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    path = Path(image)
    if not path.is_file():
        raise StainTargetError(f"stain target {path}: no such file")
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises many types for bad files
        raise StainTargetError(f"stain target {path}: cannot read the image ({exc})") from None
    return arr, str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def fit_target(method: str, image: str | os.PathLike | np.ndarray, min_tissue_pixels: int = 64) -> StainTarget:
    """Fit ``method`` ("macenko" or "reinhard") to a target image (a path or an RGB array).

    Raises :class:`StainTargetError` naming the file when it cannot be read or (Macenko)
    holds fewer than ``min_tissue_pixels`` tissue pixels.
    """
    if method not in METHODS:
        raise ValueError(f"stain_norm: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    arr, source, sha = _read_image(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise StainTargetError(f"stain target {source}: expected an RGB image, got shape {arr.shape}")
    pixels = _as_batch(arr.astype(np.float64))
    if method == "macenko":
        he, _, max_c, count = macenko_stains(pixels)
        if int(count[0]) < min_tissue_pixels:
            raise StainTargetError(
                f"stain target {source}: no tissue ({int(count[0])} pixels have optical density >= {BETA} in "
                f"every channel; need {min_tissue_pixels}) - choose an image of stained tissue")
        params = {"stain_matrix": he[0].numpy(), "max_concentrations": max_c[0].numpy()}
    else:
        mean, std = lab_stats(pixels)
        params = {"lab_mean": mean[0].numpy(), "lab_std": std[0].numpy()}
    return StainTarget(method, params, source, sha, min_tissue_pixels)


# ------------------------------------------------------------------------------ normalise
def normalize(tiles: torch.Tensor | np.ndarray, target: StainTarget) -> torch.Tensor:
    """Normalise RGB tiles ``(B,H,W,3)`` (uint8 or float in [0,255]) to ``target``.

    Returns uint8 tiles of the same shape on the same device (float64 input gives float64
    output, unrounded, for reference comparisons).
    """
    x = torch.as_tensor(tiles)
    shape = x.shape
    exact = x.dtype == torch.float64
    pixels = _as_batch(x)
    dtype, device = pixels.dtype, pixels.device
    if target.method == "macenko":
        he, conc, max_c, count = macenko_stains(pixels)
        ref_he = target.tensor("stain_matrix", device, dtype)
        ref_max = target.tensor("max_concentrations", device, dtype)
        scaled = conc * (ref_max / max_c).unsqueeze(-1)
        out = IO * torch.exp(-(ref_he @ scaled)).transpose(1, 2)        # (B, N, 3)
        out = out.clamp(max=255)
        keep = (count < target.min_tissue_pixels).view(-1, 1, 1)
        out = torch.where(keep, pixels, out)
    elif target.method == "reinhard":
        mean, std = lab_stats(pixels)
        lab = rgb_to_lab(pixels / 255)
        ref_mean = target.tensor("lab_mean", device, dtype)
        ref_std = target.tensor("lab_std", device, dtype)
        lab = (lab - mean.unsqueeze(1)) / std.clamp(min=1e-6).unsqueeze(1) * ref_std + ref_mean
        out = lab_to_rgb(lab) * 255
    else:
        raise ValueError(f"unknown stain method {target.method!r}")
    if exact:
        return out.reshape(shape)
    return _to_uint8(out, shape)


@dataclass
class StainNormalizer:
    """A callable for the extraction pipeline: uint8 tiles in, normalised uint8 tiles out."""

    target: StainTarget

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        return normalize(tiles, self.target)

    def record(self) -> dict[str, Any]:
        return self.target.record()


def from_config(node: Any) -> StainNormalizer | None:
    """The normaliser a ``stain_norm`` config node asks for (``method: null`` → None)."""
    if node is None:
        return None
    method = node.get("method") if hasattr(node, "get") else None
    if not method:
        return None
    target = node.get("target")
    if not target:
        raise ValueError(f"stain_norm={method} needs stain_norm.target=<an RGB image of the target stain>")
    return StainNormalizer(fit_target(str(method), target))


# ------------------------------------------------------------------------------ jitter
# Ruifrok & Johnston's H, E, DAB optical-density vectors (skimage.color.hed_from_rgb's inverse)
_RGB_FROM_HED = [[0.65, 0.70, 0.29],
                 [0.07, 0.99, 0.11],
                 [0.27, 0.57, 0.78]]


_OD_SCALE = float(-np.log(1e-6))


def _hed_matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    return rgb_from_hed.to(device, dtype), hed_from_rgb.to(device, dtype)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] ``(..., 3)`` → HED stain space, as ``skimage.color.rgb2hed``."""
    _, hed_from_rgb = _hed_matrices(rgb.dtype, rgb.device)
    log_adjust = torch.log(torch.tensor(1e-6, dtype=rgb.dtype, device=rgb.device))
    od = torch.log(rgb.clamp(min=1e-6)) / log_adjust
    return (od @ hed_from_rgb).clamp(min=0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """HED stain space → RGB in [0, 1], as ``skimage.color.hed2rgb``."""
    rgb_from_hed, _ = _hed_matrices(hed.dtype, hed.device)
    log_adjust = -torch.log(torch.tensor(1e-6, dtype=hed.dtype, device=hed.device))
    return torch.exp(-(hed * log_adjust) @ rgb_from_hed).clamp(0, 1)


def stain_jitter(images: torch.Tensor, sigma: float = 0.05, generator: torch.Generator | None = None,
                 alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None) -> torch.Tensor:
    """HED stain jitter of float RGB images in [0, 1], ``(B,3,H,W)`` or ``(3,H,W)``.

    Per image and stain channel: ``hed * alpha + beta`` with ``alpha ~ U(1-sigma, 1+sigma)``,
    ``beta ~ U(-sigma, sigma)`` in optical-density units (pass ``alpha``/``beta`` ``(B,3)``
    to fix them).
    """
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    b = x.shape[0]
    if alpha is None:
        alpha = 1 + (torch.rand(b, 3, generator=generator) * 2 - 1) * sigma
    if beta is None:
        beta = (torch.rand(b, 3, generator=generator) * 2 - 1) * sigma
    hed = rgb_to_hed(x.permute(0, 2, 3, 1))
    # scikit-image >= 0.19 divides optical densities by -log(1e-6); the shift is in plain
    # optical-density units, as in Tellez et al. and older scikit-image
    shift = beta.to(hed).view(b, 1, 1, 3) / _OD_SCALE
    hed = hed * alpha.to(hed).view(b, 1, 1, 3) + shift
    out = hed_to_rgb(hed).permute(0, 3, 1, 2).to(images.dtype)
    return out[0] if single else out


@dataclass
class RandomStainJitter:
    """A torchvision-style transform: HED jitter of a ``(3,H,W)`` float tensor with probability ``p``."""

    sigma: float = 0.05
    p: float = 0.5

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0 or float(torch.rand(())) >= self.p:
            return img
        return stain_jitter(img, self.sigma)
