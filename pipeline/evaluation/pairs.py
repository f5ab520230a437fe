"""Verification comparisons of a labelled set: genuine pairs and sampled impostor pairs.

Every genuine pair (two images of one identity) up to `max_genuine`, and `impostors` pairs
of images of different identities drawn uniformly without repetition (all of them when there
are fewer). Both are deterministic given the seed and independent of the FR model, so every
FR model and quality method is measured on the same comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_GENUINE = 200_000
IMPOSTORS = 500_000


@dataclass(frozen=True)
class Pairs:
    first: np.ndarray  # (P,) int64 image indices, first < second
    second: np.ndarray
    genuine: np.ndarray  # (P,) bool

    def __len__(self) -> int:
        return len(self.first)

    @property
    def genuine_count(self) -> int:
        return int(self.genuine.sum())

    @property
    def impostor_count(self) -> int:
        return len(self) - self.genuine_count


def comparison_pairs(
    identities: np.ndarray,
    *,
    max_genuine: int = MAX_GENUINE,
    impostors: int = IMPOSTORS,
    seed: int = 0,
) -> Pairs:
    labels = np.unique(np.asarray(identities), return_inverse=True)[1]
    n = len(labels)
    rng = np.random.default_rng(seed)
    genuine = _genuine_codes(labels, n)
    if len(genuine) > max_genuine:
        genuine = np.sort(rng.choice(genuine, size=max_genuine, replace=False))
    impostor = _impostor_codes(labels, n, impostors, rng)
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("comparisons need 2+ identities and an identity with 2+ images")
    codes = np.concatenate([genuine, impostor])
    return Pairs(codes // n, codes % n, np.arange(len(codes)) < len(genuine))


def _genuine_codes(labels: np.ndarray, n: int) -> np.ndarray:
    """Every same-identity pair as first * n + second."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    codes = []
    for members in np.split(order, bounds):
        i, j = np.triu_indices(len(members), k=1)
        a, b = np.minimum(members[i], members[j]), np.maximum(members[i], members[j])
        codes.append(a.astype(np.int64) * n + b)
    return np.sort(np.concatenate(codes)) if codes else np.zeros(0, np.int64)


def _impostor_codes(labels: np.ndarray, n: int, wanted: int, rng) -> np.ndarray:
    sizes = np.bincount(labels)
    total = (n * n - (sizes * sizes).sum()) // 2
    if total <= wanted:  # all of them
        i, j = np.triu_indices(n, k=1)
        differ = labels[i] != labels[j]
        return i[differ].astype(np.int64) * n + j[differ]
    codes = np.zeros(0, np.int64)
    while len(codes) < wanted:  # draw, keep distinct impostor pairs, top up
        i, j = rng.integers(0, n, size=(2, 2 * (wanted - len(codes)) + 16))
        keep = labels[i] != labels[j]
        a, b = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
        fresh = np.unique(a.astype(np.int64) * n + b)
        codes = np.union1d(codes, fresh)
    return np.sort(rng.choice(codes, size=wanted, replace=False))
