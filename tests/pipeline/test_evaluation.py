"""Evaluation of an artifact on a labelled (synthetic) dataset."""

import json

import numpy as np
import pytest
import torch

from jobs.cli import main
from pipeline.evaluation import ScoredSet, severity_quartiles
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synthetic_dataset import SynthSpec, write_synthetic
from tests.pipeline.test_scoring import artifact


def scored(quality, identities, embeddings) -> ScoredSet:
    n = len(quality)
    return ScoredSet(
        [f"i{k}" for k in range(n)],
        np.asarray(identities),
        np.asarray(quality, dtype=np.float32),
        torch.as_tensor(embeddings, dtype=torch.float32),
        {"ok": n},
    )


def test_severity_quartiles_by_hand():
    # Two identities with orthogonal embeddings; quality falls with severity except in Q3.
    identities = ["a", "b"] * 8
    embeddings = [[1.0, 0.0] if i == "a" else [0.0, 1.0] for i in identities]
    severity = np.repeat([0.0, 0.3, 0.6, 0.9], 4)
    quality = np.repeat([0.8, 0.6, 0.7, 0.2], 4)
    result = severity_quartiles(scored(quality, identities, embeddings), severity)
    assert [q["images"] for q in result["quartiles"]] == [4, 4, 4, 4]
    assert [q["mean_quality"] for q in result["quartiles"]] == pytest.approx([0.8, 0.6, 0.7, 0.2])
    assert [q["verification_accuracy"] for q in result["quartiles"]] == [1.0, 1.0, 1.0, 1.0]
    assert result["strictly_decreasing"] is False
    quality[8:12] = 0.5
    assert severity_quartiles(scored(quality, identities, embeddings), severity)[
        "strictly_decreasing"
    ]


def test_fiqa_eval_on_synthetic_faces(tmp_path, capsys):
    fs, root = filesystem(str(tmp_path / "faces"))
    write_synthetic(
        SynthSpec(identities=4, per_identity=6, split="eval"), get_format("wds"), fs, root
    )
    model = artifact(tmp_path / "model")
    out = tmp_path / "result"
    args = ["eval", "--model", model, "--data", root, "--format", "wds", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["images"] == 24 and result["identities"] == 4
    assert result["verification"]["genuine_pairs"] == 4 * 15
    assert sum(q["images"] for q in result["severity"]["quartiles"]) == 24
    assert "severity quartile" in capsys.readouterr().out
