"""Evaluation of an artifact on a labelled (synthetic) dataset."""

import json
from collections import Counter

import numpy as np
import pytest

from jobs.cli import main
from models.artifact import load_artifact, save_artifact
from models.onnx import export_onnx
from models.vit_fiqa import create_model
from pipeline.evaluation.methods import METHODS, brightness, contrast, luminance, sharpness
from pipeline.evaluation.pairs import comparison_pairs
from pipeline.evaluation.results import EdcResult
from pipeline.evaluation.severity import severity_quartiles
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synth.dataset import METADATA_FILE, SynthSpec, write_synthetic
from tests.pipeline.test_scoring import artifact


def test_severity_quartiles_by_hand():
    # Two identities with orthogonal embeddings; quality falls with severity except in Q3.
    identities = np.array(["a", "b"] * 8)
    embeddings = np.array([[1.0, 0.0] if i == "a" else [0.0, 1.0] for i in identities])
    severity = np.repeat([0.0, 0.3, 0.6, 0.9], 4)
    quality = np.repeat([0.8, 0.6, 0.7, 0.2], 4)
    result = severity_quartiles(quality, embeddings, identities, severity)
    assert [q["images"] for q in result["quartiles"]] == [4, 4, 4, 4]
    assert [q["mean_quality"] for q in result["quartiles"]] == pytest.approx([0.8, 0.6, 0.7, 0.2])
    assert [q["verification_accuracy"] for q in result["quartiles"]] == [1.0, 1.0, 1.0, 1.0]
    assert result["strictly_decreasing"] is False
    quality[8:12] = 0.5
    assert severity_quartiles(quality, embeddings, identities, severity)["strictly_decreasing"]


def test_comparison_pairs_are_complete_distinct_and_seeded():
    identities = np.repeat(["a", "b", "c", "d"], [5, 4, 1, 3])
    pairs = comparison_pairs(identities, impostors=30, seed=1)
    assert pairs.genuine_count == 10 + 6 + 0 + 3
    first, second = pairs.first, pairs.second
    assert (first < second).all()
    assert (identities[first] == identities[second]).tolist() == pairs.genuine.tolist()
    assert pairs.impostor_count == 30
    assert len(set(zip(first.tolist(), second.tolist(), strict=True))) == len(pairs)
    again = comparison_pairs(identities, impostors=30, seed=1)
    assert again.first.tolist() == first.tolist() and again.second.tolist() == second.tolist()
    other = comparison_pairs(identities, impostors=30, seed=2)
    assert other.first.tolist() != first.tolist() or other.second.tolist() != second.tolist()
    # Fewer impostor pairs than asked: all 59 of them; a genuine cap samples.
    everything = comparison_pairs(identities, max_genuine=5, impostors=1000)
    assert everything.impostor_count == 13 * 12 // 2 - 19 and everything.genuine_count == 5
    with pytest.raises(ValueError, match="2\\+ identities"):
        comparison_pairs(np.array(["a", "b"]))


def test_fiqa_eval_ranks_methods_with_every_fr_model(tmp_path, capsys):
    fs, root = filesystem(str(tmp_path / "faces"))
    write_synthetic(
        SynthSpec(identities=4, per_identity=6, split="eval", corrupt=2),
        get_format("wds"),
        fs,
        root,
    )
    model = artifact(tmp_path / "model")
    second = artifact(tmp_path / "second", seed=1)
    fs_second, second_path = filesystem(second)
    onnx_path = str(tmp_path / "second.onnx")
    loaded = load_artifact(second_path, fs=fs_second)
    export_onnx(loaded.model, loaded.input, onnx_path)
    (tmp_path / "eval.yaml").write_text(
        f"fr_models:\n  - uri: {second}\n    name: second\n  - uri: {onnx_path}\n    dtype: uint8\n"
    )
    crfiqa = str(tmp_path / "crfiqa")
    save_artifact(create_model("vit-fiqa-micro", mode="crfiqa"), crfiqa, preset="vit-fiqa-micro")
    out = tmp_path / "result"
    args = ["eval", "--config", str(tmp_path / "eval.yaml"), "--model", model, "--data", root]
    args += ["--format", "wds", "--out", str(out), "--ser-fiq-passes", "8"]
    args += ["--crfiqa-model", crfiqa, "--bootstrap", "20"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["images"] == 22 and result["identities"] == 4
    assert result["statuses"]["ok"] == 22 and sum(result["statuses"].values()) == 24
    records = [json.loads(line) for line in (tmp_path / "faces" / METADATA_FILE).open()]
    usable = Counter(r["identity"] for r in records if "corrupt" not in r)
    assert sorted(r.get("corrupt", "") for r in records)[-2:] == ["not_an_image", "truncated"]
    genuine = sum(n * (n - 1) // 2 for n in usable.values())
    assert result["protocol"]["genuine_comparisons"] == genuine < 4 * 15
    assert sum(q["images"] for q in result["severity"]["quartiles"]) == 22
    assert set(result["methods"]) == set(METHODS)
    fr_names = [fr["name"] for fr in result["fr_models"]]
    assert fr_names[1:] == ["second", "second.onnx"] and fr_names[0].startswith("own FR head")
    assert len(result["curves"]) == len(fr_names) * 2 * len(result["methods"])
    # The ONNX graph of the second artifact gives the same comparisons, so the same areas.
    pauc = {(c["fr_model"], c["method"], c["fmr"]): c["pauc"] for c in result["curves"]}
    for (fr, method, fmr), value in pauc.items():
        if fr == "second":
            assert pauc["second.onnx", method, fmr] == pytest.approx(value, abs=1e-6)
    for curve in result["curves"]:  # paired identity-bootstrap intervals
        low, high = curve["pauc_ci"]
        assert 0 <= low <= high <= 1
        assert ("pauc_minus_vit_fiqa_ci" in curve) == (curve["method"] != "vit-fiqa")
    EdcResult.model_validate(result)  # what `fiqa report --eval` reads
    ranking = (out / "ranking.md").read_text()
    assert "| 1 | " in ranking and "CR-FIQA ERC variant" in ranking
    assert (out / "edc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "pAUC to discard 0.3, best first" in printed and "severity quartile" in printed


def test_fiqa_eval_refuses_unknown_methods(tmp_path, capsys):
    model = artifact(tmp_path / "model")
    args = ["eval", "--model", model, "--data", str(tmp_path), "--format", "wds"]
    assert main([*args, "--out", str(tmp_path / "r"), "--methods", "sharpness", "magic"]) == 2
    assert "unknown quality method(s) magic" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "r"), "--methods", "vit-fiqa-crfiqa"]) == 2
    assert "needs a crfiqa-mode artifact" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "r"), "--crfiqa-model", model]) == 2
    assert "token-mode model, not crfiqa" in capsys.readouterr().err


def test_image_measures_rank_degraded_crops_lower():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
    blurred = (
        (sharp.astype(np.float32) + np.roll(sharp, 1, axis=2) + np.roll(sharp, 1, axis=1)) / 3
    ).astype(np.uint8)
    y = luminance(np.concatenate([sharp, blurred]))
    assert sharpness(y)[0] > sharpness(y)[1]
    grey, dark = np.full((1, 8, 8, 3), 128, np.uint8), np.full((1, 8, 8, 3), 20, np.uint8)
    assert brightness(luminance(grey))[0] > brightness(luminance(dark))[0]
    flat = np.full((1, 8, 8, 3), 100, np.uint8)
    assert contrast(luminance(sharp))[0] > contrast(luminance(flat))[0] == 0.0
