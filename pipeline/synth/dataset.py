"""A synthetic face dataset on storage: generated images, written in any format.

Images are rendered in worker processes (each image has its own RNG, so the bytes do not
depend on how the work is split) and written in order by one writer. Every image's generation
parameters go to `_synth_metadata.jsonl` beside the data, keyed by image_id: for analysis
only, never for training. `corrupt` images (drawn by the seed) are written damaged, half of
them truncated and half not an image at all, as real crawls have them; their metadata says
which.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal

import fsspec
import numpy as np
import PIL.Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.formats.base import DatasetFormat
from pipeline.synth.generation import generate
from pipeline.synth.sampling import DegradationPolicy
from pipeline.synth.types import DEGRADATIONS

METADATA_FILE = "_synth_metadata.jsonl"
CORRUPT_TAG = 0xBAD  # RNG key of the choice of corrupt images, apart from the renderer's
CORRUPTIONS = ("truncated", "not_an_image")


class SynthSpec(BaseModel):
    """What to generate, each setting declared once: `fiqa synth` takes its flags from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identities: int = Field(100, gt=0, description="number of identities")
    per_identity: int = Field(20, gt=0, description="images per identity")
    seed: int = Field(0, description="same seed and arguments give identical bytes")
    split: Literal["train", "eval"] = Field(
        "train", description="train and eval identities are disjoint"
    )
    degradations: list[str] | None = Field(
        None,
        description=f"degradations to mix in (default: all of {', '.join(DEGRADATIONS)}"
        "); 'none' for clean images",
    )
    image_format: Literal["jpg", "png"] = Field("jpg", description="encoding of the images")
    jpeg_quality: int = Field(
        95, ge=1, le=100, description="JPEG quality (YAML only)", json_schema_extra={"cli": False}
    )
    corrupt: int = Field(
        0, ge=0, description="images written damaged (truncated or not an image), for testing"
    )

    @field_validator("degradations")
    @classmethod
    def known_degradations(cls, names: list[str] | None) -> list[str] | None:
        if names == ["none"]:
            return []
        if names:
            DegradationPolicy.from_names(names)  # raises naming an unknown one
        return names

    def policy(self) -> DegradationPolicy:
        if self.degradations is None:
            return DegradationPolicy()
        if not self.degradations:
            return DegradationPolicy.none()
        return DegradationPolicy.from_names(self.degradations)

    @property
    def images(self) -> int:
        return self.identities * self.per_identity

    def corrupt_images(self) -> dict[int, str]:
        """Global image index -> how it is damaged."""
        rng = np.random.default_rng([self.seed, CORRUPT_TAG])
        picked = rng.choice(self.images, size=min(self.corrupt, self.images), replace=False)
        return {int(i): CORRUPTIONS[k % 2] for k, i in enumerate(sorted(picked))}


def damage(data: bytes, how: str) -> bytes:
    return data[: len(data) // 2] if how == "truncated" else b"not an image\n" * 8


def encode(pixels: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def render_identity(spec: SynthSpec, identity_index: int) -> list[tuple[str, bytes, dict]]:
    """(identity, encoded image, metadata) of every image of one identity."""
    policy = spec.policy()
    out = []
    for image_index in range(spec.per_identity):
        image = generate(
            identity_index, image_index, seed=spec.seed, split=spec.split, policy=policy
        )
        out.append(
            (
                image.identity,
                encode(image.image, spec.image_format, spec.jpeg_quality),
                image.metadata,
            )
        )
    return out


@dataclass
class SynthResult:
    images: int
    identities: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def write_synthetic(
    spec: SynthSpec,
    fmt: DatasetFormat,
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Render `spec` and write it at `root` in `fmt`; `on_progress(n)` after each identity."""
    spec.policy()  # refuse a bad degradation name before any work starts
    corrupt = spec.corrupt_images()
    start = time.perf_counter()
    with (
        fmt.writer(fs, root, shard_size=shard_size) as writer,
        fs.open(posixpath.join(root, METADATA_FILE), "wb") as metadata_file,
        identity_renderer(spec, workers) as rendered,
    ):
        for identity_index, images in enumerate(rendered):
            for image_index, (identity, data, metadata) in enumerate(images):
                key = f"{identity}_{image_index:04d}"
                how = corrupt.get(identity_index * spec.per_identity + image_index)
                if how:
                    data, metadata = damage(data, how), {**metadata, "corrupt": how}
                image_id = writer.write(key, identity, data, spec.image_format, meta=metadata)
                record = {"image_id": image_id, "identity": identity, **metadata}
                metadata_file.write((json.dumps(record, sort_keys=True) + "\n").encode())
            if on_progress:
                on_progress(len(images))
    return SynthResult(spec.images, spec.identities, time.perf_counter() - start)


@contextlib.contextmanager
def identity_renderer(spec: SynthSpec, workers: int) -> Iterator[Iterable[list]]:
    """render_identity results for every identity, in order, from `workers` processes
    (spawned, not forked: the parent may hold torch or Ray threads)."""
    indices = range(spec.identities)
    if workers <= 1:
        yield (render_identity(spec, i) for i in indices)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool.map(functools.partial(render_identity, spec), indices, chunksize=4)


def read_severities(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, float] | None:
    """image_id -> degradation severity of a synthetic dataset; None for any other dataset."""
    path = posixpath.join(root, METADATA_FILE)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return {m["image_id"]: float(m["severity"]) for m in map(json.loads, f)}
