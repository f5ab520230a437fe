"""Input normalisation: RGB pixel p (0..255) -> (p / 255 - mean) / std, per channel, NCHW.

The one definition for both sides: PyTorch (`pipeline.decode.to_model_input`) and the ONNX
graph (`models.onnx.InferenceGraph`). ONNX scores are compared to PyTorch scores, so both
compute it with the same float32 ops, (p - 255 mean) / (255 std), and agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SCALE = 255.0  # the largest pixel value: p / SCALE is in 0..1


def pixel_scale(values: Sequence[float], device: torch.device | None = None) -> torch.Tensor:
    """A per-channel mean or std times SCALE, shaped (1, 3, 1, 1) to broadcast over NCHW."""
    return torch.tensor(values, device=device).view(1, 3, 1, 1) * SCALE


def normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float32 NCHW pixels 0..255 -> model input; `mean` and `std` from `pixel_scale`."""
    return (pixels - mean) / std
