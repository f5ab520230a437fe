"""`fiqa bench model`: inference images/s of a preset, against the GEMM rate of the same run."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.vit_fiqa import ViTFIQA
from pipeline.bench.measure import gemm_flops, rate


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
