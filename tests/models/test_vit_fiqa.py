import numpy as np
import pytest
import torch

from models.presets import MODES, get_preset
from models.vit_fiqa import ViTFIQA, create_model
from tests.models.reference import key_layout, official_test_vector


@pytest.mark.parametrize("mode", MODES)
def test_reproduces_official_test_vector(mode):
    state, x, embedding, quality = official_test_vector(mode)
    model = create_model("vit-fiqa-micro", mode=mode)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        got_embedding, got_quality = model.eval()(x)
    np.testing.assert_allclose(got_embedding.numpy(), embedding, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_quality.numpy(), quality, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_vit_fiqa_s_has_the_released_layout(mode):
    model = create_model("vit-fiqa-s", mode=mode)
    state = model.state_dict()
    layout = key_layout(f"official_vit_fiqa_s_{mode}")
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == layout
    released = {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in layout.items()}
    model.load_state_dict(released, strict=True)


def test_vit_fiqa_s_token_parameter_count():
    model = create_model("vit-fiqa-s")
    assert sum(p.numel() for p in model.parameters()) == 76_025_856


@pytest.mark.parametrize("mode", MODES)
def test_forward_shapes(mode):
    model = create_model("vit-fiqa-micro", mode=mode).eval()
    embedding, quality = model(torch.randn(3, 3, 112, 112))
    assert embedding.shape == (3, 32)
    assert quality.shape == (3,)


class Recorder(torch.nn.Module):
    """Stands in for the blocks: records what they receive, passes it on unchanged."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


def tokens_with_recorder(model: ViTFIQA, x: torch.Tensor):
    recorder = Recorder()
    model.blocks = torch.nn.ModuleList([recorder])
    model.norm = torch.nn.Identity()
    return model.forward_tokens(x), recorder.seen[0]


def test_masking_keeps_int_090_of_the_tokens_and_restores_order():
    torch.manual_seed(0)
    model = create_model("vit-fiqa-micro").train()
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        tokens_eval, _ = tokens_with_recorder(model.eval(), x)
        tokens_train, kept = tokens_with_recorder(model.train(), x)
    assert kept.shape == (4, int(145 * 0.9), 32)  # 130 tokens go through the blocks
    assert tokens_train.shape == tokens_eval.shape == (4, 145, 32)
    mask_token = model.mask_token[0, 0]
    for sample in range(4):
        is_mask = (tokens_train[sample] == mask_token).all(dim=1)
        assert int(is_mask.sum()) == 145 - 130
        # Every kept slot holds exactly its own token: order was restored.
        torch.testing.assert_close(tokens_train[sample][~is_mask], tokens_eval[sample][~is_mask])


def test_masking_can_drop_the_quality_token():
    torch.manual_seed(0)
    model = create_model("vit-fiqa-micro").train()
    with torch.no_grad():
        tokens, _ = tokens_with_recorder(model, torch.randn(64, 3, 112, 112))
    dropped = (tokens[:, 0] == model.mask_token[0, 0]).all(dim=1)
    assert 0 < int(dropped.sum()) < 64


def test_nothing_is_masked_in_eval():
    model = create_model("vit-fiqa-micro").eval()
    with torch.no_grad():
        tokens, kept = tokens_with_recorder(model, torch.randn(8, 3, 112, 112))
    assert kept.shape == (8, 145, 32)
    assert not (tokens == model.mask_token[0, 0]).all(dim=2).any()


def test_eval_is_deterministic_and_train_is_stochastic():
    model = create_model("vit-fiqa-micro")
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        model.eval()
        a, b = model(x)[1], model(x)[1]
        torch.testing.assert_close(a, b)
        model.train()
        c, d = model(x)[1], model(x)[1]
    assert not torch.equal(c, d)


def test_weight_decay_exclusions():
    assert create_model("vit-fiqa-micro").no_weight_decay() == {"pos_embed", "qs_token"}
    assert create_model("vit-fiqa-micro", mode="crfiqa").no_weight_decay() == {"pos_embed"}


def test_bad_preset_and_config_are_refused():
    with pytest.raises(ValueError, match="unknown preset 'vit-fiqa-xl'"):
        get_preset("vit-fiqa-xl")
    with pytest.raises(ValueError, match="mode must be one of"):
        get_preset("vit-fiqa-micro", mode="cls")
    with pytest.raises(ValueError, match="not divisible"):
        get_preset("vit-fiqa-micro", num_heads=5)
