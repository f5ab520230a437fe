"""One evaluation run: `evaluate(plan)` scores a labelled dataset once (`features`), builds
one set of genuine and impostor comparisons (`pairs`), and measures every quality method on
them with every FR model (`comparisons`). On a synthetic dataset (one with
`_synth_metadata.jsonl`) it adds mean quality per severity quartile (`severity`).
"""

from __future__ import annotations

import numpy as np
import torch

from models.artifact import load_artifact
from pipeline.evaluation import methods
from pipeline.evaluation.comparisons import comparison_curves
from pipeline.evaluation.features import FeaturePass, SerFiq, compute_features
from pipeline.evaluation.fr_models import load_fr_model
from pipeline.evaluation.pairs import comparison_pairs
from pipeline.evaluation.plan import EvaluationError, EvaluationPlan
from pipeline.evaluation.severity import severity_quartiles
from pipeline.evaluation.verification import verification
from pipeline.storage import StorageOptions, filesystem
from pipeline.synth.dataset import read_severities


def evaluate(plan: EvaluationPlan, storage: StorageOptions | None = None) -> dict:
    wanted = plan.wanted_methods()
    device = plan.device()
    fs, path = filesystem(plan.model, storage)
    artifact = load_artifact(path, fs=fs)
    if artifact.model.config.mode != "token":
        raise EvaluationError(
            f"{plan.model} is a {artifact.model.config.mode}-mode model; "
            "evaluate a token-mode model and pass the other as crfiqa_model"
        )
    crfiqa = None
    if plan.crfiqa_model:
        crfiqa_fs, crfiqa_path = filesystem(plan.crfiqa_model, storage)
        crfiqa = load_artifact(crfiqa_path, fs=crfiqa_fs)
        if crfiqa.model.config.mode != "crfiqa":
            raise EvaluationError(
                f"{plan.crfiqa_model} is a {crfiqa.model.config.mode}-mode model, not crfiqa"
            )
    own_fr = f"own FR head ({artifact.model_id[:12]})"
    fr_models = [load_fr_model(spec, storage, device) for spec in plan.fr_models]
    names = [own_fr, *(fr.name for fr in fr_models)]
    if len(set(names)) != len(names):
        raise EvaluationError(f"FR model names must differ: {', '.join(names)}")
    feature_pass = FeaturePass(
        artifact,
        own_fr,
        wanted,
        fr_models,
        crfiqa,
        SerFiq(plan.ser_fiq_passes, plan.ser_fiq_dropout),
        plan.seed,
        torch.device(device),
    )
    try:
        features = compute_features(
            feature_pass,
            plan.data,
            plan.format,
            storage=storage,
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
            "fmrs": list(plan.fmr),
            "discard_limits": list(plan.discard_limit),
            "seed": plan.seed,
            "bootstrap": {"resamples": plan.bootstrap, "unit": "identity", "interval": 0.95},
            "ser_fiq": {"passes": plan.ser_fiq_passes, "dropout": plan.ser_fiq_dropout},
            "edc": "ISO/IEC 29794-1 EDC: threshold fixed once per FMR on all impostors, "
            "ties discarded together, stepwise pAUC",
            "erc": "CR-FIQA ERC variant: fixed fractions by count, threshold re-estimated "
            "per step, trapezoid AUC over 0-0.95; not comparable with the EDC",
        },
        "methods": [m for m in wanted if m in features.quality],
        **comparison_curves(features, pairs, plan),
    }
    severities = read_severities(*filesystem(plan.data, storage))
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
