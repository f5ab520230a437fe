"""Evaluating quality methods the way the field does: how well discarding low-quality
comparisons lowers the FR error, against baselines and across FR models.

`evaluate(plan)` scores a labelled dataset once (`features`), builds one set of genuine and
impostor comparisons (`pairs`), and for every FR model, FMR and quality method computes the
ISO EDC with its pAUC and, labelled apart, the CR-FIQA ERC variant (`edc`). On a synthetic
dataset (one with `_synth_metadata.jsonl`) it adds mean quality per severity quartile.
`write_outputs` stores the result JSON (the format `fiqa report --eval` reads), the EDC plot
and a markdown table ranking the methods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.artifact import load_artifact
from pipeline.errors import FiqaError
from pipeline.evaluation import edc, methods
from pipeline.evaluation.features import FeaturePass, Features, SerFiq, compute_features
from pipeline.evaluation.fr_models import FrModelSpec, Metric, load_fr_model
from pipeline.evaluation.pairs import IMPOSTORS, MAX_GENUINE, Pairs, comparison_pairs
from pipeline.evaluation.ranking import ranking_markdown
from pipeline.evaluation.severity import severity_quartiles
from pipeline.storage import StorageOptions, filesystem
from pipeline.synthetic_dataset import read_severities
from pipeline.verification import fmr_threshold, verification

RESULT_FILE = "result.json"
PLOT_FILE = "edc.png"
RANKING_FILE = "ranking.md"
SUMMARY_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
BOOTSTRAP_TAG = 0xB007  # RNG key of the resamples, apart from pair sampling's


class EvaluationError(FiqaError, ValueError):
    """An evaluation that cannot run as asked (bad method list, unusable dataset)."""


@dataclass(frozen=True)
class EvaluationPlan:
    model: str
    data: str
    format: str
    format_options: dict = field(default_factory=dict)
    storage: StorageOptions | None = None
    fr_models: Sequence[FrModelSpec] = ()
    crfiqa_model: str | None = None
    methods: Sequence[str] | None = None  # None: every method that applies
    fmrs: Sequence[float] = (1e-3, 1e-4)
    discard_limits: Sequence[float] = (0.2, 0.3)
    max_genuine: int = MAX_GENUINE
    impostors: int = IMPOSTORS
    bootstrap: int = 200  # identity resamples for confidence intervals; 0: none
    ser_fiq: SerFiq = field(default_factory=SerFiq)
    seed: int = 0
    batch_size: int = 128
    gpus: float | None = None  # None: a GPU when torch sees one; 0: the CPU

    def device(self) -> str:
        """Where the models run: this process's GPU or its CPU."""
        available = torch.cuda.is_available()
        if self.gpus is None:
            return "cuda" if available else "cpu"
        if self.gpus and not available:
            raise EvaluationError(f"gpus {self.gpus:g} asks for a GPU, and torch sees none")
        return "cuda" if self.gpus else "cpu"

    def wanted_methods(self) -> list[str]:
        if self.methods is None:
            return [m for m in methods.METHODS if m != methods.CRFIQA or self.crfiqa_model]
        unknown = sorted(set(self.methods) - set(methods.METHODS))
        if unknown:
            raise EvaluationError(
                f"unknown quality method(s) {', '.join(unknown)}; "
                f"available: {', '.join(methods.METHODS)}"
            )
        if methods.CRFIQA in self.methods and not self.crfiqa_model:
            raise EvaluationError(f"method {methods.CRFIQA} needs a crfiqa-mode artifact")
        return list(dict.fromkeys([methods.VIT_FIQA, *self.methods]))


def evaluate(plan: EvaluationPlan) -> dict:
    wanted = plan.wanted_methods()
    device = plan.device()
    fs, path = filesystem(plan.model, plan.storage)
    artifact = load_artifact(path, fs=fs)
    if artifact.model.config.mode != "token":
        raise EvaluationError(
            f"{plan.model} is a {artifact.model.config.mode}-mode model; "
            "evaluate a token-mode model and pass the other as crfiqa_model"
        )
    crfiqa = None
    if plan.crfiqa_model:
        crfiqa_fs, crfiqa_path = filesystem(plan.crfiqa_model, plan.storage)
        crfiqa = load_artifact(crfiqa_path, fs=crfiqa_fs)
        if crfiqa.model.config.mode != "crfiqa":
            raise EvaluationError(
                f"{plan.crfiqa_model} is a {crfiqa.model.config.mode}-mode model, not crfiqa"
            )
    own_fr = f"own FR head ({artifact.model_id[:12]})"
    fr_models = [load_fr_model(spec, plan.storage, device) for spec in plan.fr_models]
    names = [own_fr, *(fr.name for fr in fr_models)]
    if len(set(names)) != len(names):
        raise EvaluationError(f"FR model names must differ: {', '.join(names)}")
    feature_pass = FeaturePass(
        artifact, own_fr, wanted, fr_models, crfiqa, plan.ser_fiq, plan.seed, torch.device(device)
    )
    try:
        features = compute_features(
            feature_pass,
            plan.data,
            plan.format,
            storage=plan.storage,
            format_options=plan.format_options,
            batch_size=plan.batch_size,
        )
        pairs = comparison_pairs(
            features.identities,
            max_genuine=plan.max_genuine,
            impostors=plan.impostors,
            seed=plan.seed,
        )
    except ValueError as e:
        raise EvaluationError(f"{plan.data}: {e}") from None
    result = {
        "model_id": artifact.model_id,
        "data": plan.data,
        "images": len(features),
        "identities": len(set(features.identities.tolist())),
        "statuses": features.statuses,
        "verification": verification(
            torch.from_numpy(features.embeddings[own_fr]), features.identities, seed=plan.seed
        ),
        "protocol": {
            "genuine_comparisons": pairs.genuine_count,
            "impostor_comparisons": pairs.impostor_count,
            "pair_quality": "min",
            "fmrs": list(plan.fmrs),
            "discard_limits": list(plan.discard_limits),
            "seed": plan.seed,
            "bootstrap": {"resamples": plan.bootstrap, "unit": "identity", "interval": 0.95},
            "ser_fiq": {"passes": plan.ser_fiq.passes, "dropout": plan.ser_fiq.dropout},
            "edc": "ISO/IEC 29794-1 EDC: threshold fixed once per FMR on all impostors, "
            "ties discarded together, stepwise pAUC",
            "erc": "CR-FIQA ERC variant: fixed fractions by count, threshold re-estimated "
            "per step, trapezoid AUC over 0-0.95; not comparable with the EDC",
        },
        "methods": [m for m in wanted if m in features.quality],
        **comparison_curves(features, pairs, plan),
    }
    severities = read_severities(*filesystem(plan.data, plan.storage))
    if severities is not None:
        severity = np.array([severities[i] for i in features.image_ids])
        result["severity"] = severity_quartiles(
            features.quality[methods.VIT_FIQA],
            features.embeddings[own_fr],
            features.identities,
            severity,
            plan.seed,
        )
    return result


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
    limit = max(plan.discard_limits)
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
        for fmr in plan.fmrs:
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
                    "pauc_at": {f"{d:g}": curve.pauc(d) for d in plan.discard_limits},
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


def write_outputs(result: dict, out: str, storage: StorageOptions | None = None) -> dict:
    """Write result.json, edc.png and ranking.md under `out`; returns their URIs."""
    from pipeline.report.charts import edc_chart
    from pipeline.report.edc import EdcResult

    fs, root = filesystem(out, storage)
    fs.makedirs(root, exist_ok=True)
    files = {
        RESULT_FILE: json.dumps(result, indent=1).encode(),
        PLOT_FILE: edc_chart(EdcResult.model_validate(result)),
        RANKING_FILE: ranking_markdown(result).encode(),
    }
    uris = {}
    for name, data in files.items():
        with fs.open(f"{root.rstrip('/')}/{name}", "wb") as f:
            f.write(data)
        uris[name] = f"{out.rstrip('/')}/{name}"
    return uris


__all__ = [
    "EvaluationError",
    "EvaluationPlan",
    "FrModelSpec",
    "SerFiq",
    "evaluate",
    "severity_quartiles",
    "write_outputs",
]
