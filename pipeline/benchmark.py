"""Measurements behind `fiqa bench`: each figure comes with a bare baseline measured in the
same run, so a number can be read as a fraction of what this machine can do."""

from __future__ import annotations

import functools
import io
import itertools
import os
import platform
import time
from collections.abc import Callable, Iterable

import numpy as np
import PIL
import torch
from PIL import Image, features
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.vit_fiqa import ViTFIQA
from pipeline import decode


def rate(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Units per second of `step()` (which returns how many units it did), timed for at least
    `seconds` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        done += step()
    return done / elapsed


def gemm_flops(seconds: float = 2.0, n: int = 1024) -> float:
    """This machine's fp32 matrix-multiply rate in FLOP/s (n x n times n x n)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    def step() -> int:
        torch.mm(a, b, out=out)
        return 2 * n**3

    return rate(step, seconds)


def flops_per_image(model: ViTFIQA) -> int:
    """Forward FLOPs of one image (matmuls, convolution and attention, as counted by torch)."""
    size = model.config.img_size
    # torch's counter knows the GPU attention kernels but not the CPU one used here.
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    with (
        FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter,
        torch.inference_mode(),
    ):
        model(torch.zeros(1, model.config.in_chans, size, size))
    return counter.get_total_flops()


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def model_throughput(model: ViTFIQA, batch_size: int, seconds: float) -> float:
    """Images per second of eval-mode inference at `batch_size`."""
    size = model.config.img_size
    x = torch.randn(batch_size, model.config.in_chans, size, size)
    model.eval()

    def step() -> int:
        model(x)
        return batch_size

    with torch.inference_mode():
        return rate(step, seconds)


def bench_model(
    model: ViTFIQA,
    preset: str,
    batch_sizes: Iterable[int],
    seconds: float,
    log: Callable[[str], None] = print,
) -> dict:
    """Inference images/s per batch size and the fraction of the GEMM rate they achieve."""
    threads = torch.get_num_threads()
    gemm = gemm_flops(seconds=max(1.0, seconds / 2))
    per_image = flops_per_image(model)
    log(
        f"preset {preset} ({model.config.mode} mode): {per_image / 1e9:.3f} GFLOP/image, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    log(f"fp32 GEMM baseline: {gemm / 1e9:.1f} GFLOP/s on {threads} threads")
    results = []
    for batch in batch_sizes:
        images_per_s = model_throughput(model, batch, seconds)
        fraction = per_image * images_per_s / gemm
        results.append(
            {
                "batch_size": batch,
                "images_per_s": round(images_per_s, 1),
                "fraction_of_gemm": round(fraction, 3),
            }
        )
        log(f"  batch {batch:>4}: {images_per_s:8.1f} images/s  {fraction:6.1%} of GEMM rate")
    best = max(results, key=lambda r: r["images_per_s"])
    return {
        "bench": "model",
        "preset": preset,
        "mode": model.config.mode,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gflop_per_image": round(per_image / 1e9, 4),
        "gemm_gflop_per_s": round(gemm / 1e9, 1),
        "results": results,
        "best_images_per_s": best["images_per_s"],
        "best_batch_size": best["batch_size"],
    }


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
    if failed := [d.error for d in map(ours, jpegs) if d.status != decode.OK]:
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


def bench_synth(
    images: int = 200, seconds: float = 3.0, log: Callable[[str], None] = print
) -> dict:
    """Single-process (so: per core) images/s of synthetic faces, rendered, degraded and
    JPEG-encoded as `fiqa synth` writes them, beside the bare cost of encoding the same
    pixels (the floor of writing any image dataset)."""
    from pipeline.synthetic_dataset import SynthSpec, encode, render_identity

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
