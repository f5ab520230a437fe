"""`fiqa bench decode`: decode images/s per core of each JPEG backend, against the bare library."""

from __future__ import annotations

import functools
import io
import itertools
import os
import platform
from collections.abc import Callable, Iterable

import numpy as np
import PIL
from PIL import Image, features

from pipeline import decode, status
from pipeline.bench.measure import rate


def face_like_jpegs(count: int, size: int, quality: int = 90) -> list[bytes]:
    """`count` distinct size x size JPEGs that compress like face crops (smooth shading, an
    elliptic face, sensor noise: about 4 KB at 112 px, quality 90), unlike pure noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    face = ((x - 0.5) / 0.35) ** 2 + ((y - 0.45) / 0.45) ** 2 < 1
    shade = np.stack([90 + 60 * x, 80 + 50 * y, 70 + 40 * (x + y) / 2], axis=-1)
    shade[face] += (90, 60, 40)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(count):
        pixels = shade + rng.standard_normal(shade.shape, dtype=np.float32) * 6
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        jpegs.append(buffer.getvalue())
    return jpegs


def _cycling(decode_one: Callable[[bytes], object], items: list[bytes]) -> Callable[[], int]:
    """A `rate` step decoding the next item, round-robin."""
    stream = itertools.cycle(items)

    def step() -> int:
        decode_one(next(stream))
        return 1

    return step


def _bare_pillow(data: bytes) -> np.ndarray:
    # To an array, as simplejpeg's bare call and decode_image also return one.
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _bench_backend(
    backend: str, bare: Callable[[bytes], object], jpegs: list[bytes], seconds: float
) -> dict:
    ours = functools.partial(
        decode.decode_image, options=decode.DecodeOptions(jpeg_backend=backend)
    )
    if failed := [d.error for d in map(ours, jpegs) if d.status != status.OK]:
        raise RuntimeError(f"{backend} failed on the bench's own images: {failed[0]}")
    images_per_s = rate(_cycling(ours, jpegs), seconds)
    bare_per_s = rate(_cycling(bare, jpegs), seconds)
    return {
        "backend": backend,
        "images_per_s": round(images_per_s, 1),
        "bare_images_per_s": round(bare_per_s, 1),
        "ratio_to_bare": round(images_per_s / bare_per_s, 3),
    }


def bench_decode(
    images: int = 64,
    seconds: float = 1.0,
    sizes: Iterable[int] = (112, 1024),
    quality: int = 90,
    log: Callable[[str], None] = print,
) -> dict:
    """Single-thread (so: per core) images/s of `decode.decode_image` (guards, conversion,
    orientation, resize to 112) for each JPEG backend, on the same face-like JPEGs of each
    source size, beside the bare library call to an RGB array at full size: Pillow's
    `open().convert("RGB")` or `simplejpeg.decode_jpeg`. A ratio above 1 at large sizes is
    DCT scaling."""
    backends = {"pillow": _bare_pillow}
    if decode.simplejpeg is not None:
        backends["simplejpeg"] = decode.simplejpeg.decode_jpeg
    turbo = features.check_feature("libjpeg_turbo")
    log(
        f"Pillow {PIL.__version__} (libjpeg-turbo: {turbo}); simplejpeg: "
        f"{getattr(decode.simplejpeg, '__version__', 'not installed')}"
    )
    results = []
    for size in sizes:
        jpegs = face_like_jpegs(images, size, quality)
        log(
            f"{images} JPEGs of {size}x{size}, quality {quality}, "
            f"{sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB on average"
        )
        for backend, bare in backends.items():
            result = _bench_backend(backend, bare, jpegs, seconds)
            results.append({"source_size": size, **result})
            log(
                f"  {backend:>10}: {result['images_per_s']:8.1f} images/s, bare library "
                f"{result['bare_images_per_s']:8.1f} images/s ({result['ratio_to_bare']:.2f}x)"
            )
    return {
        "bench": "decode",
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": turbo,
        "simplejpeg": getattr(decode.simplejpeg, "__version__", None),
        "images": images,
        "quality": quality,
        "results": results,
    }
