"""Synthetic images by index: `generate` one, or draw a `gallery` of them.

`generate` ties it all together deterministically: the identity comes from an RNG keyed by
(seed, split, identity index) only, the image from one keyed by all four, so any image can be
made on its own (parallel shards) and train and eval identities never coincide.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, fields

import numpy as np
from PIL import Image

from pipeline.synth.degradations import apply_pose, degrade, severity_of
from pipeline.synth.geometry import camera, features, projected_landmarks
from pipeline.synth.rendering import render_with_camera
from pipeline.synth.sampling import DegradationPolicy, sample_identity, sample_variation
from pipeline.synth.types import SIZE, Identity, SynthImage

# RNG key tags: SeedSequence ignores trailing zeros, so a bare [seed, split, identity] key
# would equal [seed, split, identity, 0]; a non-zero tag keeps the two streams apart.
_IDENTITY_TAG, _IMAGE_TAG = 1, 2
SPLITS = {"train": 1, "eval": 2}


def _fields(obj) -> dict:
    """A dataclass as a dict of its (JSON-ready: numbers, strings, tuples) fields; shallower
    and much faster than `asdict`, which deep-copies."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS[split]


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, split: str, identity_index: int) -> Identity:
    """Identities are drawn once per process: a shard renders many images of each."""
    return sample_identity(identity_rng(seed, split, identity_index))


def identity_rng(seed: int, split: str, identity_index: int) -> np.random.Generator:
    """The RNG that draws identity `identity_index` of `split`: independent of image index."""
    return np.random.default_rng([seed, _split_code(split), identity_index, _IDENTITY_TAG])


def generate(
    identity_index: int,
    image_index: int,
    *,
    seed: int,
    split: str,
    policy: DegradationPolicy | None = None,
) -> SynthImage:
    """Image `image_index` of identity `identity_index` in `split` ("train" or "eval"),
    degraded under `policy` (default `DegradationPolicy()`). Same arguments, same pixels."""
    code = _split_code(split)
    if min(seed, identity_index, image_index) < 0:
        raise ValueError("seed, identity_index and image_index must be non-negative")
    policy = DegradationPolicy() if policy is None else policy
    identity = _identity(seed, split, identity_index)
    rng = np.random.default_rng([seed, code, identity_index, image_index, _IMAGE_TAG])
    variation = sample_variation(rng)
    degradations = policy.sample(rng)
    variation = apply_pose(variation, degradations)
    feat = features(identity, variation)
    cam = camera(feat, variation)
    points = projected_landmarks(feat, cam)
    image = degrade(render_with_camera(identity, variation, feat, cam), degradations, points)
    label = f"{split}-{identity_index:06d}"
    metadata = {
        "identity": label,
        "split": split,
        "seed": seed,
        "identity_index": identity_index,
        "image_index": image_index,
        "severity": severity_of(degradations),
        "degradations": [asdict(d) for d in degradations],
        "landmarks": points.round(2).tolist(),
        "identity_params": _fields(identity),
        "variation": _fields(variation),
    }
    return SynthImage(label, image, metadata)


def gallery(
    identities: int,
    variations: int,
    *,
    seed: int,
    split: str = "train",
    policy: DegradationPolicy | None = None,
) -> Image.Image:
    """A grid to look at: one row per identity, one column per image. Without a policy the
    first half of the columns is clean and the rest uses the default policy."""
    sheet = Image.new("RGB", (variations * SIZE, identities * SIZE))
    for row in range(identities):
        for col in range(variations):
            chosen = policy
            if chosen is None:
                clean = col < (variations + 1) // 2
                chosen = DegradationPolicy.none() if clean else DegradationPolicy()
            image = generate(row, col, seed=seed, split=split, policy=chosen).image
            sheet.paste(Image.fromarray(image), (col * SIZE, row * SIZE))
    return sheet
