"""Evaluating a model artifact on a labelled dataset.

The dataset is scored in this process (evaluation sets are thousands of images, not
billions): quality and FR embeddings of every readable image. From them: verification
accuracy and TAR at FMR 1e-3 with the model's own FR head and, for a synthetic dataset (one
with `_synth_metadata.jsonl`), how quality follows the degradation severity the generator
applied: mean predicted quality and verification accuracy per severity quartile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from models.artifact import load_artifact
from pipeline.datasource import shard_rows
from pipeline.decode import OK, DecodeOptions, decode_batch, to_model_input
from pipeline.formats import get_format
from pipeline.storage import StorageOptions, filesystem
from pipeline.synthetic_dataset import read_severities
from pipeline.verification import spearman, verification


@dataclass
class ScoredSet:
    image_ids: list[str]
    identities: np.ndarray  # (N,) str
    quality: np.ndarray  # (N,) float32
    embeddings: torch.Tensor  # (N, D)
    statuses: dict[str, int]  # every row read, by status


@torch.inference_mode()
def score_dataset(
    model_uri: str,
    data: str,
    format_name: str,
    *,
    storage: StorageOptions | None = None,
    format_options: dict | None = None,
    batch_size: int = 256,
) -> tuple[ScoredSet, str]:
    """(scores of the readable labelled images, model_id)."""
    fs, path = filesystem(model_uri, storage)
    artifact = load_artifact(path, fs=fs)
    model = artifact.model.eval()
    options = DecodeOptions.from_input_spec(artifact.input)
    data_fs, root = filesystem(data, storage)
    shards = get_format(format_name, **(format_options or {})).list_shards(data_fs, root)
    ids, identities, qualities, embeddings = [], [], [], []
    statuses: Counter[str] = Counter()
    pending: list[dict] = []

    def flush() -> None:
        decoded = decode_batch({"image": [r["image"] for r in pending]}, options)
        ok = decoded["status"] == OK
        statuses.update(decoded["status"].tolist())
        if ok.any():
            embedding, quality = model(to_model_input(decoded["pixels"][ok]))
            embeddings.append(embedding.float())
            qualities.append(quality.float().numpy())
            kept = [r for r, good in zip(pending, ok, strict=True) if good]
            ids.extend(r["image_id"] for r in kept)
            identities.extend(r["identity"] for r in kept)
        pending.clear()

    for shard in shards:
        for row in shard_rows(format_name, format_options or {}, data, storage, shard):
            if row["status"] != OK:
                statuses[row["status"]] += 1
            elif row["identity"] is None:
                statuses["no_identity"] += 1
            else:
                pending.append(row)
                if len(pending) == batch_size:
                    flush()
    if pending:
        flush()
    if not ids:
        raise ValueError(f"{data}: no readable labelled images")
    scored = ScoredSet(
        ids,
        np.asarray(identities),
        np.concatenate(qualities),
        torch.cat(embeddings),
        dict(sorted(statuses.items())),
    )
    return scored, artifact.model_id


def severity_quartiles(scored: ScoredSet, severity: np.ndarray, seed: int = 0) -> dict:
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
            row["mean_quality"] = float(scored.quality[inside].mean())
            try:
                embeddings = scored.embeddings[torch.from_numpy(inside)]
                found = verification(embeddings, scored.identities[inside], seed=seed)
                row["verification_accuracy"] = found["verification_accuracy"]
            except ValueError:  # too few images or identities in this quartile for pairs
                pass
        rows.append(row)
    means = [r["mean_quality"] for r in rows if "mean_quality" in r]
    return {
        "edges": edges.tolist(),
        "quartiles": rows,
        "strictly_decreasing": len(means) == 4 and all(a > b for a, b in pairwise(means)),
        "spearman_quality_vs_severity": spearman(scored.quality, -severity),
    }


def evaluate(
    model_uri: str,
    data: str,
    format_name: str,
    *,
    storage: StorageOptions | None = None,
    format_options: dict | None = None,
    seed: int = 0,
) -> dict:
    scored, model_id = score_dataset(
        model_uri, data, format_name, storage=storage, format_options=format_options
    )
    result = {
        "model_id": model_id,
        "data": data,
        "images": len(scored.image_ids),
        "identities": len(set(scored.identities.tolist())),
        "statuses": scored.statuses,
        "verification": verification(scored.embeddings, scored.identities, seed=seed),
    }
    severities = read_severities(*filesystem(data, storage))
    if severities is not None:
        severity = np.array([severities[i] for i in scored.image_ids])
        result["severity"] = severity_quartiles(scored, severity, seed)
    return result
