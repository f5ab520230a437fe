"""`fiqa bench synth`: synthetic faces rendered per second per core, against JPEG encoding alone."""

from __future__ import annotations

import io
import itertools
import platform
from collections.abc import Callable

import numpy as np
from PIL import Image

from pipeline.bench.measure import rate


def bench_synth(
    images: int = 200, seconds: float = 3.0, log: Callable[[str], None] = print
) -> dict:
    """Single-process (so: per core) images/s of synthetic faces, rendered, degraded and
    JPEG-encoded as `fiqa synth` writes them, beside the bare cost of encoding the same
    pixels (the floor of writing any image dataset)."""
    from pipeline.synth.dataset import SynthSpec, encode, render_identity

    spec = SynthSpec(identities=max(1, images // 20), per_identity=20)
    faces = itertools.cycle(range(spec.identities))

    def synth_step() -> int:
        return len(render_identity(spec, next(faces)))

    pixels = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for _, data, _ in render_identity(spec, 0)
    ]

    def encode_step() -> int:
        for p in pixels:
            encode(p, spec.image_format, spec.jpeg_quality)
        return len(pixels)

    synth_rate, encode_rate = rate(synth_step, seconds, warmup=1), rate(encode_step, seconds)
    log(
        f"synthetic faces: {synth_rate:.0f} images/s per core "
        f"(JPEG encoding alone: {encode_rate:.0f} images/s, {synth_rate / encode_rate:.1%})"
    )
    return {
        "bench": "synth",
        "images_per_s_per_core": round(synth_rate, 1),
        "encode_only_images_per_s": round(encode_rate, 1),
        "ratio_to_encode_only": round(synth_rate / encode_rate, 3),
        "cpu": platform.processor() or platform.machine(),
    }
