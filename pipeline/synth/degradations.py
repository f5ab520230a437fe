"""Degradations applied, each taking identity information away with a continuous severity
in [0, 1] (their parameters are drawn in `sampling`).

`extreme_pose` changes the pose before rendering; occlusion, exposure, contrast, blurs,
resampling, sensor noise and JPEG act on the pixels, in that (camera) order. The image's
overall severity is 1 - prod(1 - s_i) over the applied ones.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from pipeline.synth.pixels import PIXELS_X, PIXELS_Y, smoothstep
from pipeline.synth.types import DEGRADATIONS, SIZE, TEMPLATE, Degradation, Variation


def apply_pose(variation: Variation, degradations: Iterable[Degradation]) -> Variation:
    """The variation with any `extreme_pose` degradation applied (before rendering)."""
    for d in degradations:
        if d.name == "extreme_pose":
            variation = replace(
                variation, yaw=d.params["yaw"], pitch=variation.pitch + d.params["pitch"]
            )
    return variation


def degrade(
    image: np.ndarray, degradations: Iterable[Degradation], points: np.ndarray | None = None
) -> np.ndarray:
    """Apply the pixel-level degradations to a uint8 (S, S, 3) image in camera order.
    `points` are its five landmarks, where occluders go (default: the template, right for
    any aligned crop). `extreme_pose` is skipped: it acts before rendering (`apply_pose`)."""
    points = TEMPLATE if points is None else points
    for d in sorted(degradations, key=lambda d: DEGRADATIONS.index(d.name)):
        if d.name != "extreme_pose":
            image = _APPLY[d.name](image, d.params, points)
    return image


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _gaussian_blur(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    if params["sigma"] <= 0:
        return image
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(params["sigma"]))
    return np.asarray(blurred)


def _motion_blur(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    length = params["length"]
    taps = max(round(length), 1)
    angle = math.radians(params["angle"])
    steps = np.linspace(-(length - 1) / 2, (length - 1) / 2, taps)
    offsets = {(round(t * math.cos(angle)), round(t * math.sin(angle))) for t in steps}
    pad = math.ceil(length / 2) + 1
    padded = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros(image.shape, dtype=np.float32)
    for ox, oy in offsets:
        acc += padded[pad + oy : pad + oy + SIZE, pad + ox : pad + ox + SIZE]
    return _to_uint8(acc / len(offsets))


def _downsample(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    size = params["size"]
    if size >= SIZE:
        return image
    up = Image.Resampling.BICUBIC if params["up"] == "bicubic" else Image.Resampling.BILINEAR
    down = Image.Resampling.NEAREST if params["down"] == "nearest" else Image.Resampling.BOX
    small = Image.fromarray(image).resize((size, size), down)
    return np.asarray(small.resize((SIZE, SIZE), up))


def _noise_degradation(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(params["seed"])
    x = image.astype(np.float32)
    # Read noise plus shot noise that grows with brightness; part of it shared by channels.
    sigma = params["sigma"] * (0.5 + 0.5 * np.sqrt(x / 255))
    chroma = params["chroma"]
    luma = rng.standard_normal((SIZE, SIZE, 1), dtype=np.float32)
    colour = rng.standard_normal((SIZE, SIZE, 3), dtype=np.float32)
    mixed = (1 - chroma) * luma + chroma * colour
    mixed /= math.sqrt((1 - chroma) ** 2 + chroma**2)
    return _to_uint8(x + sigma * mixed)


def _jpeg(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    """libjpeg through Pillow (4:2:0 chroma, as cameras and web encoders store faces), after
    an earlier compression at `first_quality` when there was one."""
    for quality in (params["first_quality"], params["quality"]):
        if quality is not None:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
            image = np.asarray(Image.open(buffer).convert("RGB"))
    return image


def _exposure(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    linear = (image.astype(np.float32) / 255) ** 2 * params["gain"]
    return _to_uint8(np.sqrt(np.clip(linear, 0, 1)) * 255)


def _low_contrast(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    level = params["level"] * 255
    return _to_uint8(level + params["contrast"] * (image.astype(np.float32) - level))


def _occlusion(image: np.ndarray, params: dict, points: np.ndarray) -> np.ndarray:
    """Something in front of the face, placed on its landmarks; `coverage` in [0, 1] sets how
    much of the face it hides."""
    out = image.astype(np.float32)
    colour = np.asarray(params["colour"], dtype=np.float32) * 255
    occluder = {"sunglasses": _sunglasses, "mask": _face_mask, "patch": _patch}[params["kind"]]
    alpha, fill = occluder(colour, params, points)
    return _to_uint8(out + alpha[..., None] * (fill - out))


def _sunglasses(colour, params: dict, points: np.ndarray):
    """Two dark lenses on the eyes and a bridge; bigger and more opaque with coverage."""
    coverage = params["coverage"]
    size = 0.65 + 0.65 * coverage
    alpha = np.zeros((SIZE, SIZE), dtype=np.float32)
    for ex, ey in points[:2]:
        d = ((PIXELS_X - ex) / (10 * size)) ** 2 + ((PIXELS_Y - ey) / (7.5 * size)) ** 2
        alpha = np.maximum(alpha, smoothstep(1.05, 0.95, d))
    (lx, ly), (rx, ry) = points[0], points[1]
    bridge = (np.abs(PIXELS_Y - (ly + ry) / 2 + 3) < 1.2) & (lx < PIXELS_X) & (rx > PIXELS_X)
    alpha = np.maximum(alpha, bridge) * (0.75 + 0.25 * coverage)
    # Dark tinted glass with a faint vertical gradient of reflected sky.
    fill = colour * 0.25 + 0.8 * np.clip(ly + 8 - PIXELS_Y, 0, 16)[..., None]
    return alpha, fill


def _face_mask(colour, params: dict, points: np.ndarray):
    """A pleated face mask from the chin up to below the mouth (coverage 0) or up to the eyes
    (coverage 1)."""
    nose, mouth = points[2], points[3:].mean(0)
    top = mouth[1] - 7 - params["coverage"] * (mouth[1] - nose[1] + 14)
    left, right = points[3, 0] - 16, points[4, 0] + 16
    span = np.clip((PIXELS_X - left) / (right - left), 0, 1)
    edge = top + 10 * (2 * span - 1) ** 2  # higher over the nose
    alpha = ((edge < PIXELS_Y) & (left < PIXELS_X) & (right > PIXELS_X)).astype(np.float32)
    pleats = 1 + 0.08 * np.sin((PIXELS_Y - top) * 0.9)
    return alpha, (colour * 0.5 + 110) * pleats[..., None]


def _patch(colour, params: dict, points: np.ndarray):
    """A textured square near the face centre covering 4 % (coverage 0) to 44 % of it."""
    side = SIZE * math.sqrt(0.04 + 0.4 * params["coverage"])
    cx, cy = 56 + 22 * params["position"][0], 62 + 22 * params["position"][1]
    inside = (np.abs(PIXELS_X - cx) < side / 2) & (np.abs(PIXELS_Y - cy) < side / 2)
    texture = np.random.default_rng(params["seed"]).random((SIZE, SIZE, 1), dtype=np.float32)
    return inside.astype(np.float32), colour * (0.7 + 0.6 * texture)


_APPLY = {
    "occlusion": _occlusion,
    "exposure": _exposure,
    "low_contrast": _low_contrast,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "downsample": _downsample,
    "noise": _noise_degradation,
    "jpeg": _jpeg,
}


def severity_of(degradations: Iterable[Degradation]) -> float:
    """Overall severity: the chance that at least one degradation 'hits' if each hit with its
    own severity, 1 - prod(1 - s_i); 0 for a clean image."""
    clean = 1.0
    for d in degradations:
        clean *= 1.0 - d.severity
    return 1.0 - clean
