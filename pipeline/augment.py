"""Training augmentations in the spirit of the official ViT-FIQA recipe, on whole batches.

Everything runs in torch on normalised float batches (N, 3, H, W) in [-1, 1], on whatever
device the batch is on, with per-sample random parameters from one `torch.Generator` (so a
checkpoint can store and restore the stream). Pixels moved in from outside the image are 0,
mid-grey. The official recipe: random affine (scale 0.8-1.2, offset 0.1, rotation up to 20
degrees with p 0.2), h-flip p 0.5, cutout p 0.2, blur p 0.2 and RandAugment; `photometric`
stands in for RandAugment's colour operations (brightness, contrast, saturation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

AUGMENTATIONS: tuple[str, ...] = ("affine", "flip", "photometric", "blur", "cutout")
# Those that leave a face as useful for recognition as it was: the only ones a run with a
# teacher may use, since the teacher's CR was measured on the image before augmentation.
UTILITY_PRESERVING: tuple[str, ...] = ("flip",)

AFFINE_SCALE = (0.8, 1.2)
AFFINE_OFFSET = 0.1  # fraction of the side
ROTATION_DEGREES, ROTATION_P = 20.0, 0.2
FLIP_P = 0.5
CUTOUT_P, CUTOUT_SIDE = 0.2, (0.1, 0.4)  # fraction of the side
BLUR_P, BLUR_SIGMA, BLUR_TAPS = 0.2, (0.5, 2.0), 9
PHOTOMETRIC_P, PHOTOMETRIC_RANGE = 0.2, 0.4  # factors drawn from 1 +- range


def check_augmentations(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {unknown[0]!r}; valid ones are: {', '.join(AUGMENTATIONS)}"
        )
    return names


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _chance(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def random_affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, device = x.shape[0], x.device
    scale = _uniform(n, *AFFINE_SCALE, g, device)
    angle = _uniform(n, -ROTATION_DEGREES, ROTATION_DEGREES, g, device)
    angle = torch.where(_chance(n, ROTATION_P, g, device), angle, 0.0) * (math.pi / 180)
    # affine_grid maps output to input coordinates in [-1, 1]: a side of 2, so an offset of
    # 0.1 of the side is 0.2 there.
    shift = _uniform(2 * n, -2 * AFFINE_OFFSET, 2 * AFFINE_OFFSET, g, device).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = _chance(x.shape[0], FLIP_P, g, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_cutout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    device = x.device
    side = _uniform(n, *CUTOUT_SIDE, g, device) * min(h, w)
    cy, cx = _uniform(n, 0, h, g, device), _uniform(n, 0, w, g, device)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    half = (side / 2)[:, None, None]
    inside = ((ys - cy[:, None, None]).abs() < half) & ((xs - cx[:, None, None]).abs() < half)
    inside &= _chance(n, CUTOUT_P, g, device)[:, None, None]
    return x.masked_fill(inside[:, None], 0.0)


def random_blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma: one grouped separable convolution."""
    n, c, h, w = x.shape
    device = x.device
    sigma = _uniform(n, *BLUR_SIGMA, g, device)
    taps = torch.arange(BLUR_TAPS, device=device, dtype=x.dtype) - BLUR_TAPS // 2
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.dtype)
    pad = BLUR_TAPS // 2
    flat = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    blurred = flat.view(n, c, h, w)
    return torch.where(_chance(n, BLUR_P, g, device)[:, None, None, None], blurred, x)


def random_photometric(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in 1 +- PHOTOMETRIC_RANGE."""
    n, device = x.shape[0], x.device
    low, high = 1 - PHOTOMETRIC_RANGE, 1 + PHOTOMETRIC_RANGE
    brightness, contrast, saturation = (
        _uniform(n, low, high, g, device)[:, None, None, None] for _ in range(3)
    )
    pixel = (x + 1) / 2 * brightness  # to [0, 1], where brightness is a scale
    grey = pixel.mean(1, keepdim=True)
    pixel = grey + (pixel - grey) * saturation
    pixel = pixel.mean((1, 2, 3), keepdim=True) + (pixel - pixel.mean((1, 2, 3), keepdim=True)) * (
        contrast
    )
    out = (pixel.clamp(0, 1) * 2 - 1).to(x.dtype)
    return torch.where(_chance(n, PHOTOMETRIC_P, g, device)[:, None, None, None], out, x)


OPERATIONS = {
    "affine": random_affine,
    "flip": random_flip,
    "cutout": random_cutout,
    "blur": random_blur,
    "photometric": random_photometric,
}


def augment(x: torch.Tensor, names: Iterable[str], generator: torch.Generator) -> torch.Tensor:
    """Apply the named augmentations (in the fixed order of AUGMENTATIONS) to a batch."""
    enabled = set(check_augmentations(names))
    for name in AUGMENTATIONS:
        if name in enabled:
            x = OPERATIONS[name](x, generator)
    return x
