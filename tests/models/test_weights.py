import io
import os
import pickle

import numpy as np
import pytest
import torch

from models.weights import WeightsError, detect_mode, import_weights, read_state_dict
from tests.models.reference import official_test_vector, random_state


def pt_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["token", "crfiqa", "full"])
def test_official_file_imports_in_its_detected_mode(mode):
    state, x, embedding, quality = official_test_vector(mode)
    model = import_weights("official-vit-fiqa", pt_bytes(state), preset="vit-fiqa-micro")
    assert model.config.mode == mode
    with torch.no_grad():
        got_embedding, got_quality = model.eval()(x)
    np.testing.assert_allclose(got_embedding.numpy(), embedding, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_quality.numpy(), quality, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["token", "crfiqa", "full"])
def test_released_vit_fiqa_s_layouts_import_strictly(mode):
    state = random_state(f"official_vit_fiqa_s_{mode}")
    assert detect_mode(state) == mode
    model = import_weights("official-vit-fiqa", pt_bytes(state))
    assert torch.equal(model.state_dict()["feature.0.weight"], state["feature.0.weight"])


def test_ddp_prefix_and_wrapper_dicts_are_unwrapped():
    state, *_ = official_test_vector("token")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    model = import_weights("official-vit-fiqa", pt_bytes(wrapped), preset="vit-fiqa-micro")
    assert torch.equal(model.state_dict()["qs_token"], state["qs_token"])


def test_insightface_vit_becomes_a_token_mode_initialisation():
    state = random_state("insightface_arcface_torch_vit_s")
    model = import_weights("insightface-vit", pt_bytes(state))
    got = model.state_dict()
    assert model.config.mode == "token"
    torch.testing.assert_close(got["pos_embed"][:, 1:], state["pos_embed"], rtol=0, atol=0)
    for key in (
        "patch_embed.proj.weight",
        "blocks.11.mlp.fc2.weight",
        "feature.0.weight",
        "feature.3.running_var",
        "mask_token",
        "norm.bias",
    ):
        assert torch.equal(got[key], state[key]), key
    # The new parts are initialised, not left empty.
    assert got["qs_token"].abs().sum() > 0 and got["pos_embed"][:, 0].abs().sum() > 0
    assert got["head_qs.1.weight"].abs().sum() > 0


def test_wrong_keys_are_refused_with_their_names():
    state = random_state("official_vit_fiqa_s_token")
    del state["blocks.3.attn.qkv.weight"]
    state["blocks.3.attn.qkv.bias"] = torch.zeros(1536)
    with pytest.raises(
        WeightsError,
        match=r"missing keys: blocks\.3\.attn\.qkv\.weight.*"
        r"unexpected keys: blocks\.3\.attn\.qkv\.bias",
    ):
        import_weights("official-vit-fiqa", pt_bytes(state))


def test_wrong_shapes_are_refused_with_expected_shapes():
    state = random_state("official_vit_fiqa_s_token")
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(1024, 512)
    with pytest.raises(
        WeightsError,
        match=r"blocks\.0\.mlp\.fc1\.weight: \(1024, 512\) "
        r"torch\.float32 \(expected \(2048, 512\)",
    ):
        import_weights("official-vit-fiqa", pt_bytes(state))


def test_a_file_of_another_size_names_the_preset():
    state, *_ = official_test_vector("token")
    with pytest.raises(WeightsError, match=r"as vit-fiqa-s, token mode.*wrong shapes"):
        import_weights("official-vit-fiqa", pt_bytes(state))


def test_official_weights_are_not_an_insightface_backbone():
    state = random_state("official_vit_fiqa_s_token")
    with pytest.raises(WeightsError, match=r"insightface ViT.*unexpected keys: head_qs"):
        import_weights("insightface-vit", pt_bytes(state))


def test_truncated_file_is_refused():
    data = pt_bytes(random_state("insightface_arcface_torch_vit_s"))
    with pytest.raises(WeightsError, match="truncated or not a PyTorch weights file"):
        import_weights("insightface-vit", data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or not a PyTorch weights file"):
        read_state_dict(b"")


class RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, zip_format):
    marker = tmp_path / "was-run"
    buffer = io.BytesIO()
    torch.save(
        {"pos_embed": torch.zeros(1), "payload": RunsCode(str(marker))},
        buffer,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(WeightsError, match=r"refused.*nothing in it was executed: .*GLOBAL"):
        import_weights("official-vit-fiqa", buffer.getvalue())
    assert not marker.exists()
    # The same payload does run under plain pickle: the test would notice a regression.
    pickle.loads(pickle.dumps(RunsCode(str(marker))))
    assert marker.exists()


def test_non_tensor_entries_and_non_dicts_are_refused():
    with pytest.raises(WeightsError, match="'epoch' is a int, not a tensor"):
        read_state_dict(pt_bytes({"pos_embed": torch.zeros(1), "epoch": 3}))
    with pytest.raises(WeightsError, match="expected a state_dict, found list"):
        read_state_dict(pt_bytes([torch.zeros(1)]))


def test_unknown_source_is_refused():
    with pytest.raises(WeightsError, match="unknown weights source"):
        import_weights("timm", b"")
