"""What the comparisons show, per FR model: the distributions of genuine and impostor scores,
the threshold and FNMR at each FMR, and for every quality method the ISO EDC with its pAUC
(and identity-bootstrap intervals) and the CR-FIQA ERC variant (`edc`).
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation import edc, methods
from pipeline.evaluation.features import Features
from pipeline.evaluation.fr_models import Metric
from pipeline.evaluation.pairs import Pairs
from pipeline.evaluation.plan import EvaluationPlan
from pipeline.evaluation.verification import fmr_threshold

SUMMARY_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
BOOTSTRAP_TAG = 0xB007  # RNG key of the resamples, apart from pair sampling's


def comparison_scores(
    embeddings: np.ndarray, pairs: Pairs, metric: Metric = "cosine", chunk: int = 65536
) -> np.ndarray:
    """Similarity of each pair: the cosine of L2-normalised embeddings, or minus the
    Euclidean distance (higher is more alike either way)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), chunk):
        a = embeddings[pairs.first[start : start + chunk]]
        b = embeddings[pairs.second[start : start + chunk]]
        if metric == "cosine":
            out[start : start + chunk] = (a * b).sum(axis=1)
        else:
            out[start : start + chunk] = -np.linalg.norm(a - b, axis=1)
    return out


def bootstrap_weights(
    identities: np.ndarray, pairs: Pairs, resamples: int, seed: int
) -> np.ndarray | None:
    """(resamples, genuine comparisons) weights: identities drawn with replacement, each
    genuine comparison counted as often as its identity was drawn (comparisons of one
    identity are not independent, identities are)."""
    if resamples == 0:
        return None
    labels = np.unique(identities, return_inverse=True)[1]
    count = labels.max() + 1
    drawn = np.random.default_rng([seed, BOOTSTRAP_TAG]).multinomial(
        count, np.full(count, 1 / count), size=resamples
    )
    return drawn[:, labels[pairs.first[pairs.genuine]]].astype(np.float64)


def score_summary(scores: np.ndarray) -> dict:
    """Mean, standard deviation and quantiles (q01 ... q99) of comparison scores."""
    quantiles = dict(zip(SUMMARY_QUANTILES, np.quantile(scores, SUMMARY_QUANTILES), strict=True))
    return {
        "mean": float(scores.mean()),
        "sd": float(scores.std()),
        **{f"q{round(q * 100):02d}": float(v) for q, v in quantiles.items()},
    }


def interval(values: np.ndarray) -> list[float]:
    return np.percentile(values, [2.5, 97.5]).tolist()


def comparison_curves(features: Features, pairs: Pairs, plan: EvaluationPlan) -> dict:
    """The `fr_models`, `curves` (ISO EDC) and `erc` entries of the result."""
    limit = max(plan.discard_limit)
    fr_rows, curves, ercs = [], [], []
    pair_quality = {
        name: edc.pair_quality(q, pairs.first, pairs.second) for name, q in features.quality.items()
    }
    weights = bootstrap_weights(features.identities, pairs, plan.bootstrap, plan.seed)
    for fr_name, embeddings in features.embeddings.items():
        scores = comparison_scores(embeddings, pairs, features.metrics[fr_name])
        genuine, impostor = scores[pairs.genuine], scores[~pairs.genuine]
        row = {
            "name": fr_name,
            "embedding_dim": int(embeddings.shape[1]),
            "similarity": "cosine" if features.metrics[fr_name] == "cosine" else "-distance",
            "genuine": score_summary(genuine),
            "impostor": score_summary(impostor),
            "at_fmr": [],
        }
        for fmr in plan.fmr:
            threshold = fmr_threshold(impostor, fmr)
            row["at_fmr"].append(
                {
                    "fmr": fmr,
                    "threshold": threshold,
                    "fnmr": float((genuine <= threshold).mean()),
                    # Fewer impostors than 1 / fmr: the threshold is the highest impostor score.
                    "resolvable": len(impostor) * fmr >= 1,
                }
            )
            resampled = {}  # method -> pAUC of each bootstrap resample, paired across methods
            for method, quality in pair_quality.items():
                curve = edc.edc(genuine, quality[pairs.genuine], threshold)
                thin = curve.thinned()
                entry = {
                    "method": method,
                    "fr_model": fr_name,
                    "fmr": fmr,
                    "threshold": threshold,
                    "discard": thin.discard.tolist(),
                    "fnmr": thin.fnmr.tolist(),
                    "pauc": curve.pauc(limit),
                    "pauc_discard_limit": limit,
                    "pauc_at": {f"{d:g}": curve.pauc(d) for d in plan.discard_limit},
                    "starting_error": curve.starting_error,
                }
                if weights is not None:
                    resampled[method] = np.array(
                        [
                            edc.edc(genuine, quality[pairs.genuine], threshold, w).pauc(limit)
                            for w in weights
                        ]
                    )
                    entry["pauc_ci"] = interval(resampled[method])
                curves.append(entry)
                variant = edc.erc(scores, quality, pairs.genuine, fmr)
                ercs.append(
                    {
                        "method": method,
                        "fr_model": fr_name,
                        "fmr": fmr,
                        "discard": variant.discard.tolist(),
                        "fnmr": variant.fnmr.tolist(),
                        "auc": edc.trapezoid_auc(variant),
                    }
                )
            if weights is not None:  # each method's pAUC minus ViT-FIQA's, resample by resample
                ours = resampled[methods.VIT_FIQA]
                for entry in curves[-len(pair_quality) :]:
                    if entry["method"] != methods.VIT_FIQA:
                        entry["pauc_minus_vit_fiqa_ci"] = interval(
                            resampled[entry["method"]] - ours
                        )
        fr_rows.append(row)
    return {"fr_models": fr_rows, "curves": curves, "erc": ercs}
