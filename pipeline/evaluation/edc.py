"""Error-versus-Discard curves of a quality measure on FR comparisons.

Two variants, kept apart because their numbers are not comparable:

- `edc`: ISO/IEC 29794-1:2024 as specified by Schlett et al. (arXiv 2303.13294). The decision
  threshold is fixed once, at the target FMR over all impostor comparisons. Each genuine
  comparison has the quality of its worse sample (min); the lowest-quality comparisons are
  discarded first, and only whole groups of equal quality at a time (a discard step never
  splits a tie). FNMR is measured over the genuine comparisons that remain. `pauc` integrates
  that step function up to a discard limit.
- `erc`: the Error-versus-Reject variant of the CR-FIQA and ViT-FIQA papers' evaluation code:
  fixed discard fractions 0, 0.05, ..., 0.95 of all comparisons (genuine and impostor sorted
  together by pair quality, cut by count, ties split), the threshold re-estimated at each step
  from the impostors that remain, and the area by the trapezoid rule over the whole range.

A comparison is a match when its score is above the threshold (`fmr_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.verification import fmr_threshold

ERC_FRACTIONS = tuple(round(0.05 * k, 2) for k in range(20))


@dataclass(frozen=True)
class Curve:
    """FNMR (`fnmr[i]`) after discarding the fraction `discard[i]` of genuine comparisons."""

    discard: np.ndarray
    fnmr: np.ndarray

    @property
    def starting_error(self) -> float:
        return float(self.fnmr[0])

    def pauc(self, limit: float) -> float:
        """Area under the step function from discard 0 to `limit`; the last step holds to the
        limit when the curve ends before it (nothing more can be discarded without a tie)."""
        ends = np.append(self.discard[1:], np.inf)
        widths = np.clip(np.minimum(ends, limit) - self.discard, 0.0, None)
        return float((widths * self.fnmr).sum())

    def thinned(self, step: float = 1e-3) -> Curve:
        """At most one point per `step` of discard (the first in each), for storing and
        plotting; the areas are computed on the full curve."""
        cell = np.floor(self.discard / step)
        first = np.concatenate([[True], cell[1:] > cell[:-1]])
        return Curve(self.discard[first], self.fnmr[first])


def edc(
    genuine_scores: np.ndarray,
    genuine_quality: np.ndarray,
    threshold: float,
    weights: np.ndarray | None = None,
) -> Curve:
    """The ISO EDC of genuine comparisons (scores, pair qualities) at a fixed threshold.

    `weights` (non-negative, one per comparison) counts each comparison that many times, as a
    bootstrap resample does; discard fractions are then fractions of the total weight."""
    scores = np.asarray(genuine_scores, dtype=np.float64)
    quality = np.asarray(genuine_quality, dtype=np.float64)
    n = len(scores)
    if n == 0 or len(quality) != n:
        raise ValueError("edc needs one pair quality per genuine comparison, and at least one")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(quality, kind="stable")
    quality, w = quality[order], w[order]
    errors = w * (scores[order] <= threshold)
    # Discarding the first k is allowed where the k-th and (k+1)-th differ in quality.
    cuts = np.concatenate([[0], np.flatnonzero(quality[1:] > quality[:-1]) + 1])
    remaining_weight = np.cumsum(w[::-1])[::-1][cuts]
    remaining_errors = np.cumsum(errors[::-1])[::-1][cuts]
    left = remaining_weight > 0
    total = remaining_weight[0]
    return Curve(
        (total - remaining_weight[left]) / total, remaining_errors[left] / remaining_weight[left]
    )


def pair_quality(quality: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The quality of a comparison: that of its worse sample."""
    return np.minimum(quality[first], quality[second])


def erc(
    scores: np.ndarray,
    quality: np.ndarray,
    genuine: np.ndarray,
    fmr: float,
    fractions: tuple[float, ...] = ERC_FRACTIONS,
) -> Curve:
    """The CR-FIQA-style curve over all comparisons (`genuine` marks the mated ones)."""
    order = np.argsort(np.asarray(quality, dtype=np.float64), kind="stable")
    scores, genuine = np.asarray(scores)[order], np.asarray(genuine, dtype=bool)[order]
    fnmr = []
    for fraction in fractions:
        kept = slice(int(fraction * len(scores)), None)
        kept_scores, kept_genuine = scores[kept], genuine[kept]
        mated = kept_scores[kept_genuine]
        if len(mated) == 0 or kept_genuine.all():  # undefined: nothing to measure
            fnmr.append(float("nan"))
            continue
        threshold = fmr_threshold(kept_scores[~kept_genuine], fmr)
        fnmr.append(float((mated <= threshold).mean()))
    return Curve(np.asarray(fractions, dtype=np.float64), np.asarray(fnmr))


def trapezoid_auc(curve: Curve) -> float:
    """The ERC area as the papers' code computes it (nan where a step was undefined)."""
    return float(np.trapezoid(curve.fnmr, curve.discard))
