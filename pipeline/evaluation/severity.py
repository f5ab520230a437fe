"""How predicted quality follows the degradation severity of a synthetic dataset."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch

from pipeline.evaluation.verification import spearman, verification


def severity_quartiles(
    quality: np.ndarray,
    embeddings: np.ndarray,
    identities: np.ndarray,
    severity: np.ndarray,
    seed: int = 0,
) -> dict:
    """Mean quality and verification accuracy (pairs within the quartile) per quartile of
    severity; `strictly_decreasing` says whether mean quality falls from each to the next."""
    edges = np.quantile(severity, [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, severity, side="right")
    rows = []
    for k in range(4):
        inside = quartile == k
        row = {"quartile": k + 1, "images": int(inside.sum())}
        if row["images"]:
            row["mean_severity"] = float(severity[inside].mean())
            row["mean_quality"] = float(quality[inside].mean())
            try:
                found = verification(
                    torch.from_numpy(embeddings[inside]), identities[inside], seed=seed
                )
                row["verification_accuracy"] = found["verification_accuracy"]
            except ValueError:  # too few images or identities in this quartile for pairs
                pass
        rows.append(row)
    means = [r["mean_quality"] for r in rows if "mean_quality" in r]
    return {
        "edges": edges.tolist(),
        "quartiles": rows,
        "strictly_decreasing": len(means) == 4 and all(a > b for a, b in pairwise(means)),
        "spearman_quality_vs_severity": spearman(quality, -severity),
    }
