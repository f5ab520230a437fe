import json

import fsspec
import pytest
import torch

from models.artifact import ArtifactError, load_artifact, model_id_of, save_artifact
from models.presets import MODES
from models.vit_fiqa import create_model


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_gives_bit_identical_outputs(tmp_path, mode):
    torch.manual_seed(0)
    model = create_model("vit-fiqa-micro", mode=mode).eval()
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        before = model(x)
    model_id = save_artifact(
        model, str(tmp_path / "a"), preset="vit-fiqa-micro", training={"epochs": 1}
    )
    artifact = load_artifact(str(tmp_path / "a"))
    assert (
        artifact.model_id
        == model_id
        == model_id_of((tmp_path / "a/model.safetensors").read_bytes())
    )
    assert len(model_id) == 12
    assert artifact.preset == "vit-fiqa-micro" and artifact.training == {"epochs": 1}
    assert not artifact.model.training
    with torch.no_grad():
        after = artifact.model(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_config_describes_the_input(tmp_path):
    save_artifact(create_model("vit-fiqa-micro"), str(tmp_path), preset="vit-fiqa-micro")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["input"] == {
        "size": [112, 112],
        "layout": "NCHW",
        "scale": 255.0,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "colour_order": "RGB",
    }
    assert config["mode"] == config["architecture"]["mode"] == "token"


def test_same_weights_same_model_id(tmp_path):
    model = create_model("vit-fiqa-micro")
    assert save_artifact(model, str(tmp_path / "a"), preset=None) == save_artifact(
        model, str(tmp_path / "b"), preset=None
    )


def test_any_fsspec_filesystem_can_hold_it():
    fs = fsspec.filesystem("memory")
    model = create_model("vit-fiqa-micro")
    model_id = save_artifact(model, "/artifacts/m", preset="vit-fiqa-micro", fs=fs)
    assert load_artifact("/artifacts/m", fs=fs).model_id == model_id


def test_changed_weights_are_refused(tmp_path):
    save_artifact(create_model("vit-fiqa-micro"), str(tmp_path), preset=None)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights were changed"):
        load_artifact(str(tmp_path))


def test_missing_files_and_unknown_formats_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_artifact(str(tmp_path))
    save_artifact(create_model("vit-fiqa-micro"), str(tmp_path), preset=None)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ArtifactError, match="unknown artifact format"):
        load_artifact(str(tmp_path))
