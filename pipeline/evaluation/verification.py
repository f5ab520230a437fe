"""Metrics of a training run on held-out data: face verification on pairs of held-out
identities, and the rank correlation of predicted quality with the CR target.

Verification: every genuine pair (same identity) of the evaluation images, and as many
impostor pairs drawn at random (seeded), scored by cosine similarity. `accuracy` is the best
accuracy over all thresholds on these balanced pairs (the threshold is chosen on the pairs
themselves, so it is an upper bound, as in a one-fold LFW protocol); `tar_at_fmr` is the
fraction of genuine pairs accepted at the threshold where at most `fmr` of ALL impostor
pairs are accepted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FMR = 1e-3


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    rank = np.empty(len(values), dtype=np.float64)
    rank[order] = np.arange(len(values), dtype=np.float64)
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        if count > 1:
            rank[order[start : start + count]] = start + (count - 1) / 2
    return rank


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; nan for fewer than 2 values or a constant input."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman: lengths differ ({len(a)} and {len(b)})")
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def best_threshold_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold): accept score > threshold; the best over every cut point."""
    scores = np.concatenate([genuine, impostor])
    is_genuine = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    order = np.argsort(-scores, kind="stable")
    scores, is_genuine = scores[order], is_genuine[order]
    # Accepting the top k: correct = genuine among them + impostors outside them.
    accepted_genuine = np.concatenate([[0], np.cumsum(is_genuine)])
    accepted_impostor = np.arange(len(scores) + 1) - accepted_genuine
    correct = accepted_genuine + (len(impostor) - accepted_impostor)
    # Only cut between distinct scores (ties go together).
    valid = np.concatenate([[True], scores[:-1] > scores[1:], [True]])
    k = int(np.argmax(np.where(valid, correct, -1)))
    # score > scores[k] accepts exactly the top k (scores[k - 1] > scores[k] at a valid cut).
    threshold = scores[k] if k < len(scores) else scores[-1] - 1.0
    return float(correct[k] / len(scores)), float(threshold)


def fmr_threshold(impostor: np.ndarray, fmr: float = FMR) -> float:
    """The smallest threshold t such that accepting score > t accepts at most `fmr` of the
    impostor scores."""
    n = len(impostor)
    allowed = int(np.floor(fmr * n))
    if allowed >= n:
        return -np.inf
    # The (allowed + 1)-th highest score; a partition instead of a sort (evaluation asks often).
    return float(np.partition(impostor, n - 1 - allowed)[n - 1 - allowed])


def tar_at_fmr(genuine: np.ndarray, impostor: np.ndarray, fmr: float = FMR) -> float:
    """Genuine accept rate at `fmr_threshold`."""
    return float((genuine > fmr_threshold(impostor, fmr)).mean())


def verification(
    embeddings: torch.Tensor, identities: np.ndarray, *, seed: int = 0, fmr: float = FMR
) -> dict[str, float]:
    """Verification metrics of (N, D) embeddings labelled with `identities` (N,)."""
    identities = np.asarray(identities)
    n = len(identities)
    if n < 2:
        raise ValueError("verification needs at least 2 images")
    e = F.normalize(embeddings.float(), dim=1)
    similarity = (e @ e.T).cpu().numpy()
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    same = identities[:, None] == identities[None, :]
    genuine = similarity[upper & same]
    impostor_all = similarity[upper & ~same]
    if len(genuine) == 0 or len(impostor_all) == 0:
        raise ValueError("verification needs identities with 2+ images and 2+ identities")
    rng = np.random.default_rng(seed)
    count = min(len(genuine), len(impostor_all))
    impostor = impostor_all[rng.choice(len(impostor_all), size=count, replace=False)]
    genuine_sample = genuine[rng.choice(len(genuine), size=count, replace=False)]
    accuracy, threshold = best_threshold_accuracy(genuine_sample, impostor)
    return {
        "verification_accuracy": accuracy,
        "verification_threshold": threshold,
        "tar_at_fmr": tar_at_fmr(genuine, impostor_all, fmr),
        "genuine_pairs": float(len(genuine)),
        "impostor_pairs": float(len(impostor_all)),
    }
