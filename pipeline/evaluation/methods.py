"""Quality methods compared by the evaluation; every one scores an image, higher is better.

- `vit-fiqa`: the quality token of the evaluated model (token mode).
- `vit-fiqa-crfiqa`: the quality head on the FR embedding of a crfiqa-mode artifact, when one
  is given.
- `random`: uniform noise, seeded; the floor every method must beat.
- `sharpness`: variance of the Laplacian of the luminance.
- `brightness`: closeness of the mean luminance to mid-grey, -|mean - 127.5|.
- `contrast`: RMS contrast, the standard deviation of the luminance.
- `embedding-norm`: the L2 norm of the evaluated model's FR embedding (MagFace's idea).
- `ser-fiq`: SER-FIQ on the evaluated model's FR head: T forward passes of the head with
  dropout, q = 2 / (1 + exp(mean pairwise distance of the normalised embeddings)).

The image measures see the decoded crop at the model's input size, as the model does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.vit_fiqa import ViTFIQA

VIT_FIQA = "vit-fiqa"
CRFIQA = "vit-fiqa-crfiqa"
BASELINES = ("random", "sharpness", "brightness", "contrast", "embedding-norm", "ser-fiq")
METHODS = (VIT_FIQA, CRFIQA, *BASELINES)

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, H, W), ITU-R BT.601 weights."""
    return pixels.astype(np.float32) @ LUMA


def sharpness(y: np.ndarray) -> np.ndarray:
    laplacian = (
        y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1]
    )
    return laplacian.reshape(len(y), -1).var(axis=1)


def brightness(y: np.ndarray) -> np.ndarray:
    return -np.abs(y.reshape(len(y), -1).mean(axis=1) - 127.5)


def contrast(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).std(axis=1)


IMAGE_MEASURES = {"sharpness": sharpness, "brightness": brightness, "contrast": contrast}


@torch.inference_mode()
def ser_fiq(
    model: ViTFIQA,
    fr_input: torch.Tensor,
    *,
    passes: int,
    dropout: float,
    generator: torch.Generator,
) -> np.ndarray:
    """SER-FIQ scores of (B, fr_tokens * embed_dim) flattened FR tokens.

    Dropout acts on the head's hidden 512-d layer (between its two linear maps), so the
    backbone and the large flatten projection run once and T = 100 stays cheap; the model
    itself has no dropout layer to reuse."""
    project, norm_1, embed, norm_2 = model.feature
    hidden = norm_1(project(fr_input))  # (B, D)
    batch, dim = hidden.shape
    keep = torch.empty(passes, batch, dim, device=hidden.device)
    keep.bernoulli_(1 - dropout, generator=generator)
    samples = norm_2(embed((hidden * keep / (1 - dropout)).reshape(passes * batch, dim)))
    samples = F.normalize(samples.reshape(passes, batch, -1).transpose(0, 1), dim=2)
    distances = torch.cdist(samples, samples)  # (B, T, T)
    mean_distance = distances.sum(dim=(1, 2)) / (passes * (passes - 1))
    return (2 / (1 + torch.exp(mean_distance))).cpu().numpy()
