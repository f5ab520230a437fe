"""Training objective of ViT-FIQA: a margin-penalty softmax for the FR embedding plus a
regression of the quality output onto the CR-FIQA certainty ratio.

Everything that touches the class axis goes through a `ClassReduce`: maxima and sums over
classes are taken locally and then combined across the workers that hold the other classes.
On one process the combine step is the identity; the class-sharded trainer passes an
all-reduce (`pipeline/class_shard.py`). No function here needs all class centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MarginKind = Literal["cosface", "arcface"]
MARGIN_DEFAULTS: dict[str, tuple[float, float]] = {"cosface": (64.0, 0.4), "arcface": (64.0, 0.5)}
INIT_BLOCK = 4096  # classes per seeded draw of initial centres


class ClassReduce:
    """Combines per-shard reductions over the class axis. Identity: all classes are local."""

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x


def initial_centres(offset: int, count: int, embed_dim: int, seed: int) -> torch.Tensor:
    """Rows [offset, offset + count) of an N(0, 0.01^2) centre matrix drawn in seeded blocks of
    INIT_BLOCK classes, so a class starts from the same centre however the classes are split."""
    rows = []
    for block in range(offset // INIT_BLOCK, (offset + count - 1) // INIT_BLOCK + 1):
        drawn = np.random.default_rng([seed, block]).standard_normal(
            (INIT_BLOCK, embed_dim), dtype=np.float32
        )
        start = block * INIT_BLOCK
        rows.append(drawn[max(offset - start, 0) : offset + count - start])
    return torch.from_numpy(np.concatenate(rows) * np.float32(0.01))


class ClassCentres(nn.Module):
    """The class-centre matrix for classes [offset, offset + num_local) of num_classes.

    Labels are global class indices; rows whose class lives on another shard contribute
    nothing to this shard's target terms.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        offset: int = 0,
        num_local: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.offset = offset
        self.num_local = num_classes - offset if num_local is None else num_local
        if not 0 <= offset < offset + self.num_local <= num_classes:
            raise ValueError(
                f"class shard [{offset}, {offset + self.num_local}) is not inside "
                f"[0, {num_classes})"
            )
        self.weight = nn.Parameter(initial_centres(offset, self.num_local, embed_dim, seed))

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, num_local) cosines between embeddings and this shard's class centres."""
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))

    def local_target(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask of rows whose class is on this shard, their local column index or 0)."""
        local = labels - self.offset
        owned = (local >= 0) & (local < self.num_local)
        return owned, torch.where(owned, local, torch.zeros_like(local))


class MarginPenalty(nn.Module):
    """Applies the margin to the true-class cosine: CosFace s(cos - m), ArcFace s cos(t + m)."""

    def __init__(
        self, kind: MarginKind = "cosface", s: float | None = None, m: float | None = None
    ):
        super().__init__()
        if kind not in MARGIN_DEFAULTS:
            raise ValueError(f"margin must be one of {sorted(MARGIN_DEFAULTS)}, got {kind!r}")
        default_s, default_m = MARGIN_DEFAULTS[kind]
        self.kind = kind
        self.s = default_s if s is None else s
        self.m = default_m if m is None else m

    def target_logit(self, cos_true: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosface":
            return self.s * (cos_true - self.m)
        # ArcFace; past theta = pi - m the angle cannot grow further, so fall back to the
        # usual monotone extension cos(t) - m sin(m) (keeps the logit decreasing in t).
        cos_true = cos_true.clamp(-1 + 1e-7, 1 - 1e-7)
        sin_true = torch.sqrt(1 - cos_true * cos_true)
        with_margin = cos_true * math.cos(self.m) - sin_true * math.sin(self.m)
        fallback = cos_true - math.sin(math.pi - self.m) * self.m
        return self.s * torch.where(cos_true > math.cos(math.pi - self.m), with_margin, fallback)


def true_cosine(
    cos: torch.Tensor, owned: torch.Tensor, local: torch.Tensor, reduce: ClassReduce
) -> torch.Tensor:
    """(B,) cosine to the true class centre, gathered from whichever shard holds it."""
    rows = torch.arange(cos.shape[0], device=cos.device)
    return reduce.sum(torch.where(owned, cos[rows, local], torch.zeros_like(cos[:, 0])))


def margin_cross_entropy(
    cos: torch.Tensor,
    cos_true: torch.Tensor,
    owned: torch.Tensor,
    local: torch.Tensor,
    margin: MarginPenalty,
    reduce: ClassReduce,
) -> torch.Tensor:
    """Per-row softmax cross-entropy over all classes with the margin on the true class."""
    rows = torch.arange(cos.shape[0], device=cos.device)
    true_logit = margin.target_logit(cos_true)
    logits = (margin.s * cos).clone()
    logits[rows, local] = torch.where(owned, true_logit, logits[rows, local])
    with torch.no_grad():
        shift = reduce.max(logits.max(dim=1).values)
    log_norm = torch.log(reduce.sum(torch.exp(logits - shift[:, None]).sum(dim=1))) + shift
    return log_norm - true_logit


@torch.no_grad()
def certainty_ratio(
    cos: torch.Tensor,
    cos_true: torch.Tensor,
    owned: torch.Tensor,
    local: torch.Tensor,
    reduce: ClassReduce,
) -> torch.Tensor:
    """CR = CCS / (NNCCS + 1 + 1e-9) from margin-free cosines; never carries a gradient.

    CCS is the cosine to the true class centre, NNCCS the largest cosine to any other centre.
    """
    others = cos.clone()
    others[owned.nonzero().squeeze(1), local[owned]] = -math.inf
    nnccs = reduce.max(others.max(dim=1).values)
    return cos_true.detach() / (nnccs + 1 + 1e-9)


@dataclass
class LossParts:
    """The combined loss and the parts worth logging (all scalars but `cr`)."""

    total: torch.Tensor
    ce: torch.Tensor
    quality: torch.Tensor  # alpha * SmoothL1, the term added to `ce`
    cr: torch.Tensor  # per-row CR target, detached
    accuracy: torch.Tensor  # fraction of rows whose margin-free top-1 class is the true one

    def scalars(self) -> dict[str, float]:
        return {
            "loss": self.total.item(),
            "ce": self.ce.item(),
            "quality_loss": self.quality.item(),
            "cr_mean": self.cr.mean().item(),
            "cr_std": self.cr.std().item(),
            "accuracy": self.accuracy.item(),
        }


class FIQALoss(nn.Module):
    """CE(margin softmax) + alpha * SmoothL1(beta)(quality, CR target). The target is the CR
    of these centres, or one given (a pretrained teacher's CR)."""

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        margin: MarginKind = "cosface",
        s: float | None = None,
        m: float | None = None,
        alpha: float = 10.0,
        beta: float = 0.5,
        offset: int = 0,
        num_local: int | None = None,
        reduce: ClassReduce | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.centres = ClassCentres(
            embed_dim, num_classes, offset=offset, num_local=num_local, seed=seed
        )
        self.margin = MarginPenalty(margin, s, m)
        self.alpha, self.beta = alpha, beta
        self.reduce = reduce or ClassReduce()

    def forward(
        self,
        embedding: torch.Tensor,
        quality: torch.Tensor,
        labels: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> LossParts:
        cos = self.centres.cosine(embedding.float())
        owned, local = self.centres.local_target(labels)
        cos_true = true_cosine(cos, owned, local, self.reduce)
        ce = margin_cross_entropy(cos, cos_true, owned, local, self.margin, self.reduce).mean()
        if target is None:
            cr = certainty_ratio(cos, cos_true, owned, local, self.reduce)
        else:
            cr = target.float().detach()
        quality_loss = self.alpha * F.smooth_l1_loss(quality.float(), cr, beta=self.beta)
        with torch.no_grad():
            best = self.reduce.max(cos.max(dim=1).values)
            accuracy = (cos_true >= best).float().mean()
        return LossParts(ce + quality_loss, ce, quality_loss, cr, accuracy)
