"""Import of third-party weight files into ViT-FIQA.

Two layouts are understood: the official ViT-FIQA release (a plain backbone state_dict in any
of the three modes) and an insightface arcface_torch ViT backbone (no quality token, 144
position entries), which becomes a ViT-FIQA initialisation. Files are opened with
`torch.load(weights_only=True)` only: a pickle that asks for anything but tensors and plain
containers is refused before any of it runs.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from typing import Literal, get_args

import torch

from models.presets import get_preset
from models.vit_fiqa import ViTFIQA
from pipeline.errors import FiqaError

# The layouts of weights files that can be imported.
Source = Literal["official-vit-fiqa", "insightface-vit"]
SOURCES: tuple[str, ...] = get_args(Source)
# Keys that only ViT-FIQA has; an insightface backbone lacks them and gets them fresh.
QUALITY_KEYS = ("qs_token", "head_qs.")


class WeightsError(FiqaError, ValueError):
    """A weights file that cannot be imported; the message names the problem."""


def read_state_dict(data: bytes, name: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a `.pt` file, read with weights_only=True; wrappers and DDP prefixes removed."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch explains at length; the line naming a refused global is the one that matters.
        asked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if not asked:  # an opcode the weights-only loader does not know: garbage or corrupt
            raise WeightsError(
                f"{name}: truncated or not a PyTorch weights file (unreadable pickle; "
                f"nothing in it was executed)"
            ) from None
        raise WeightsError(
            f"{name}: refused: the file's pickle asks to build objects other than tensors "
            f"(it could run code), so nothing in it was executed: {asked[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightsError(
            f"{name}: truncated or not a PyTorch weights file ({type(e).__name__}: {e})"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and set(obj) == {wrapper}:
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{name}: expected a state_dict, found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def detect_mode(state: Mapping[str, torch.Tensor]) -> str:
    """The official mode a state_dict was trained in, from its keys and shapes."""
    if "qs_token" not in state:
        return "crfiqa"
    tokens, dim = state["pos_embed"].shape[1:]
    fr_in = state["feature.0.weight"].shape[1] if "feature.0.weight" in state else None
    return "full" if fr_in == tokens * dim else "token"


def check_layout(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str
) -> None:
    """Refuse `state` unless it has exactly the keys, shapes and dtypes of `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} {state[k].dtype} (expected "
        f"{tuple(expected[k].shape)} {expected[k].dtype})"
        for k in expected
        if k in state and (state[k].shape, state[k].dtype) != (expected[k].shape, expected[k].dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes or dtypes: {_few(wrong)}")
    if problems:
        raise WeightsError(f"{name}: " + "; ".join(problems))


def _few(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def import_official(
    state: Mapping[str, torch.Tensor], preset: str = "vit-fiqa-s", name: str = "weights"
) -> ViTFIQA:
    """A ViT-FIQA model holding an official release's weights, in the mode they were made for."""
    model = ViTFIQA(get_preset(preset, mode=detect_mode(state)))
    check_layout(state, model.state_dict(), f"{name} (as {preset}, {model.config.mode} mode)")
    model.load_state_dict(state, strict=True)
    return model


def import_insightface(
    state: Mapping[str, torch.Tensor],
    preset: str = "vit-fiqa-s",
    name: str = "weights",
    seed: int = 0,
) -> ViTFIQA:
    """A token-mode ViT-FIQA initialised from an insightface ViT backbone: everything is
    copied but the quality token, its position entry and the quality head, which are new."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTFIQA(get_preset(preset, mode="token"))
    target = model.state_dict()
    expected = {k: v for k, v in target.items() if not k.startswith(QUALITY_KEYS)}
    expected["pos_embed"] = target["pos_embed"][:, 1:]
    check_layout(state, expected, f"{name} (as an insightface ViT for {preset})")
    merged = dict(target)
    merged.update({k: v for k, v in state.items() if k != "pos_embed"})
    merged["pos_embed"] = torch.cat([target["pos_embed"][:, :1], state["pos_embed"]], dim=1)
    model.load_state_dict(merged, strict=True)
    return model


def import_weights(
    source: Source, data: bytes, preset: str = "vit-fiqa-s", name: str = "weights"
) -> ViTFIQA:
    if source not in SOURCES:
        raise WeightsError(f"unknown weights source {source!r}; expected one of {SOURCES}")
    state = read_state_dict(data, name)
    if source == "official-vit-fiqa":
        return import_official(state, preset, name)
    return import_insightface(state, preset, name)
