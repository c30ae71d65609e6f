"""Multi-crop augmentation for H&E tiles (iBOT/DINO recipe adapted to histology).

Each tile gives 2 global crops (default 224 px) and N local crops (default 96 px). Why each
transform is there, and why some of the natural-image recipe is left out:

* RandomResizedCrop: global crops cover 14-100 % of the tile, local crops 5-40 %; matching
  a small local view to a large global one is what teaches scale-invariant context.
* Horizontal and vertical flips, and rotations by multiples of 90 degrees: a tissue
  section has no canonical orientation, so these are free, label-preserving symmetries
  (unlike natural images, where "up" exists). No arbitrary-angle rotation: it would add
  black corners or need cropping.
* Colour jitter (probability 0.8, moderate: brightness 0.2, contrast 0.2, saturation 0.2,
  hue 0.05): stains vary between labs, scanners and batches; jitter makes the features
  robust to it. It is milder than DINO's (0.4, 0.4, 0.2, 0.1) because hue and saturation
  carry diagnostic signal in H&E (haematoxylin blue vs eosin pink).
* No random grayscale: it would erase the stain information entirely.
* Gaussian blur (radius 0.1-2 px; always on global crop 1, 10 % on global crop 2, 50 % on
  local crops, as in iBOT): mimics focus variation of slide scanners.
* Solarisation (20 % on global crop 2 only, as in iBOT): an asymmetric, strong photometric
  change that keeps the two global views different.
* Stain jitter (off by default; ``stain_jitter`` > 0): haematoxylin/eosin amounts scaled
  and shifted in HED space (Tellez et al. 2018), closer to real staining differences than
  RGB colour jitter. See :mod:`rl_benchmarks.slides.stain`.
* Normalisation with ImageNet mean/std, which Phikon's extractors use at inference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from rl_benchmarks.constants import IMAGENET_MEAN, IMAGENET_STD  # re-exported here
from rl_benchmarks.slides.stain import RandomStainJitter


class RandomRot90:
    """Rotate a PIL image by 0, 90, 180 or 270 degrees, uniformly."""

    _OPS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
            Image.Transpose.ROTATE_270)

    def __call__(self, img: Image.Image) -> Image.Image:
        op = self._OPS[random.randrange(4)]
        return img if op is None else img.transpose(op)


@dataclass
class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and a radius uniform in [rmin, rmax]."""

    p: float = 0.5
    rmin: float = 0.1
    rmax: float = 2.0

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.rmin, self.rmax)))


@dataclass
class RandomSolarize:
    """PIL solarisation (invert pixels above 128) with probability ``p``."""

    p: float = 0.2

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


@dataclass
class AugmentConfig:
    """All knobs of :class:`MultiCropAugmentation` (see the module docstring for why)."""

    global_size: int = 224
    local_size: int = 96
    local_number: int = 10
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    blur_global1: float = 1.0
    blur_global2: float = 0.1
    blur_local: float = 0.5
    solarize_global2: float = 0.2
    stain_jitter: float = 0.0
    stain_jitter_p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("global_size", "local_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"crops.{name} must be positive, got {getattr(self, name)}")
        if int(self.local_number) < 0:
            raise ValueError(f"crops.local_number must be >= 0, got {self.local_number}")
        for name in ("global_scale", "local_scale"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crops.{name} must satisfy 0 < min <= max <= 1, got ({lo}, {hi})")
            setattr(self, name, (lo, hi))


class MultiCropAugmentation:
    """PIL image -> list of tensors: [global 1, global 2, local 1, ..., local N].

    Randomness comes from Python's ``random`` and torch's global generator, which the
    dataset seeds per (seed, epoch, index) so that a resumed run sees the same crops.
    """

    def __init__(self, cfg: AugmentConfig | None = None):
        self.cfg = cfg = cfg or AugmentConfig()
        geometric = [T.RandomHorizontalFlip(cfg.hflip), T.RandomVerticalFlip(cfg.vflip)]
        if cfg.rot90:
            geometric.append(RandomRot90())
        jitter = T.RandomApply(
            [T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p
        )
        stain = [RandomStainJitter(cfg.stain_jitter, cfg.stain_jitter_p)] if cfg.stain_jitter > 0 else []
        normalize = T.Compose([T.ToTensor(), *stain, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        bicubic = T.InterpolationMode.BICUBIC

        def crop(size: int, scale: tuple[float, float]) -> T.RandomResizedCrop:
            return T.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        g = crop(cfg.global_size, cfg.global_scale)
        self.global1 = T.Compose([g, *geometric, jitter, RandomGaussianBlur(cfg.blur_global1),
                                  normalize])
        self.global2 = T.Compose([g, *geometric, jitter, RandomGaussianBlur(cfg.blur_global2),
                                  RandomSolarize(cfg.solarize_global2), normalize])
        self.local = T.Compose([crop(cfg.local_size, cfg.local_scale), *geometric, jitter,
                                RandomGaussianBlur(cfg.blur_local), normalize])

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(img), self.global2(img)]
        crops += [self.local(img) for _ in range(self.cfg.local_number)]
        return crops
