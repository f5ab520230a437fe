"""Readers for the reference fixtures: official test vectors and state-dict key lists."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent.parent / "fixtures"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_test_vector(mode: str):
    """(state_dict, input, embedding, quality) of the official model at the micro size."""
    data = np.load(FIXTURES / f"vit_fiqa_official_testvector_{mode}.npz")
    state = {
        k.removeprefix("weight/"): torch.from_numpy(data[k])
        for k in data.files
        if k.startswith("weight/")
    }
    return state, torch.from_numpy(data["input"]), data["embedding"], data["quality"][:, 0]


def key_layout(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) from one of the reference `.keys.tsv` files."""
    layout = {}
    for line in (FIXTURES / f"{name}.keys.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        layout[key] = (tuple(ast.literal_eval(shape)), DTYPES[dtype])
    return layout


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the reference layout `name`, filled with small random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in key_layout(name).items():
        if dtype == torch.int64:
            state[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state
