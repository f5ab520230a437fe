import argparse
import io
import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from jobs.cli import build_parser, main
from models.artifact import load_artifact
from models.onnx import InferenceGraph
from tests.models.reference import official_test_vector


def fiqa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=300
    )


def subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_verb_explains_itself():
    for name, verb in subcommands(build_parser()):
        for leaf, parser in dict(subcommands(verb)).items() or [(name, verb)]:
            # Formatting the help formats every flag's help too.
            assert re.search(r"^examples?:$", parser.format_help(), re.MULTILINE), leaf


def test_the_command_line_and_a_light_verb_import_neither_torch_nor_ray():
    probe = """
import contextlib, io, sys
import jobs.cli
at_import = sorted({"torch", "ray"} & set(sys.modules))
with contextlib.redirect_stdout(io.StringIO()):
    try:
        jobs.cli.main(["query", "--help"])
    except SystemExit:
        pass
print(at_import, sorted({"torch", "ray"} & set(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert result.stdout.split("\n")[-2] == "[] []", result.stdout + result.stderr


def test_help_lists_the_verbs_and_each_verb_has_an_example():
    result = fiqa("--help")
    assert result.returncode == 0
    for verb in ("init-model", "import-weights", "export-onnx", "bench"):
        assert verb in result.stdout
        if verb != "bench":
            assert "example:" in fiqa(verb, "--help").stdout
    assert "example:" in fiqa("bench", "model", "--help").stdout


def test_init_model_then_export_onnx_agrees_with_torch(tmp_path):
    assert (
        main(
            [
                "init-model",
                "--preset",
                "vit-fiqa-micro",
                "--mode",
                "token",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert (
        main(["export-onnx", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "m.onnx")])
        == 0
    )
    artifact = load_artifact(str(tmp_path / "m"))
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["embedding", "quality"]
    graph = InferenceGraph(artifact.model, artifact.input).eval()
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch axis is dynamic
        pixels = rng.integers(0, 256, (batch, 3, 112, 112), dtype=np.uint8)
        embedding, quality = session.run(None, {"image": pixels})
        with torch.no_grad():
            want_embedding, want_quality = graph(torch.from_numpy(pixels))
        np.testing.assert_allclose(embedding, want_embedding.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(quality, want_quality.numpy(), rtol=1e-4, atol=1e-5)


def test_inference_graph_normalises_like_the_reference(tmp_path):
    state, x, *_ = official_test_vector("crfiqa")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "crfiqa.pt").write_bytes(buffer.getvalue())
    assert (
        main(
            [
                "import-weights",
                "--from",
                "official-vit-fiqa",
                str(tmp_path / "crfiqa.pt"),
                "--preset",
                "vit-fiqa-micro",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    artifact = load_artifact(str(tmp_path / "m"))
    assert artifact.model.config.mode == "crfiqa"
    assert artifact.training["imported_from"]["file"] == "crfiqa.pt"
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        from_pixels = InferenceGraph(artifact.model, artifact.input)(pixels)[1]
        from_floats = artifact.model(pixels.float() / 127.5 - 1)[1]
    torch.testing.assert_close(from_pixels, from_floats, rtol=1e-5, atol=1e-5)


def test_import_weights_refusal_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "import-weights",
                "--from",
                "insightface-vit",
                str(tmp_path / "bad.pt"),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.pt: truncated or not a PyTorch weights file" in err
    assert "Traceback" not in err and not (tmp_path / "m").exists()


def test_bad_values_are_refused_naming_the_field(tmp_path, capsys):
    assert main(["init-model", "--preset", "vit-fiqa-xl", "--out", str(tmp_path)]) == 2
    assert "preset (--preset): Value error, unknown preset 'vit-fiqa-xl'" in capsys.readouterr().err
    assert main(["bench", "model", "--seconds", "-1"]) == 2
    assert "seconds (--seconds): Input should be greater than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["init-model", "--mode", "cls", "--out", "x"])


def test_yaml_config_is_read_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "init.yaml"
    config.write_text(f"preset: vit-fiqa-micro\nmode: full\nout: {tmp_path / 'from-yaml'}\n")
    assert main(["init-model", "--config", str(config), "--mode", "crfiqa"]) == 0
    artifact = load_artifact(str(tmp_path / "from-yaml"))
    assert (artifact.preset, artifact.model.config.mode) == ("vit-fiqa-micro", "crfiqa")
    config.write_text("preset: vit-fiqa-micro\nout: x\nlearning_rate: 3\n")
    assert main(["init-model", "--config", str(config)]) == 2
    assert "learning_rate: Extra inputs are not permitted" in capsys.readouterr().err


def test_bench_model_ends_with_one_json_line():
    result = fiqa(
        "bench",
        "model",
        "--preset",
        "vit-fiqa-micro",
        "--batch-sizes",
        "1",
        "4",
        "--seconds",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "model" and figures["preset"] == "vit-fiqa-micro"
    assert [r["batch_size"] for r in figures["results"]] == [1, 4]
    assert all(r["images_per_s"] > 0 and r["fraction_of_gemm"] > 0 for r in figures["results"])
    assert figures["gemm_gflop_per_s"] > 0 and figures["gflop_per_image"] > 0


def test_bench_query_answers_over_the_generated_manifest():
    result = fiqa("bench", "query", "--rows", "30000", "--datasets", "3", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "query" and figures["rows"] == 30000
    assert figures["datasets"] == 3 and figures["files"] == 3  # one file per partition
    assert figures["query_s"] > 0 and figures["bare_duckdb_s"] > 0
