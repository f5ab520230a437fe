"""The model artifact: a directory holding `model.safetensors` and `config.json`.

`model_id` is the first 12 hex digits of the SHA-256 of the weights file, so two artifacts
with the same id score identically. The directory may be local or on object storage: pass any
fsspec-style filesystem (`open`, `makedirs`) as `fs`; without one, the local disk is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.normalisation import SCALE
from models.presets import ViTFIQAConfig
from models.vit_fiqa import ViTFIQA
from pipeline.errors import FiqaError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "vit-fiqa-artifact"
FORMAT_VERSION = 1


class ArtifactError(FiqaError, ValueError):
    """An artifact directory that is missing, corrupt or of an unknown format."""


class FileSystem(Protocol):
    def open(self, path: str, mode: str = "rb"): ...
    def makedirs(self, path: str, exist_ok: bool = False) -> None: ...


class LocalFileSystem:
    def open(self, path: str, mode: str = "rb"):
        return open(path, mode)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: pixel p (0..255) -> (p / 255 - mean) / std, NCHW."""

    size: int = 112
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    colour_order: str = "RGB"

    def to_dict(self) -> dict:
        return {
            "size": [self.size, self.size],
            "layout": "NCHW",
            "scale": SCALE,
            "mean": list(self.mean),
            "std": list(self.std),
            "colour_order": self.colour_order,
        }

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(
            size=int(data["size"][0]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            colour_order=data["colour_order"],
        )


@dataclass
class Artifact:
    model: ViTFIQA
    model_id: str
    preset: str | None
    input: InputSpec = field(default_factory=InputSpec)
    training: dict[str, Any] = field(default_factory=dict)


def model_id_of(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()[:12]


def save_artifact(
    model: ViTFIQA,
    directory: str,
    *,
    preset: str | None,
    training: dict[str, Any] | None = None,
    fs: FileSystem | None = None,
) -> str:
    """Write the artifact and return its model_id."""
    fs = fs or LocalFileSystem()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(state)
    model_id = model_id_of(weights)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "preset": preset,
        "mode": model.config.mode,
        "architecture": model.config.to_dict(),
        "input": InputSpec(size=model.config.img_size).to_dict(),
        "training": training or {},
    }
    fs.makedirs(directory, exist_ok=True)
    with fs.open(posixpath.join(directory, WEIGHTS_FILE), "wb") as f:
        f.write(weights)
    with fs.open(posixpath.join(directory, CONFIG_FILE), "wb") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True).encode())
    return model_id


def load_artifact(
    directory: str, *, fs: FileSystem | None = None, map_location: str | torch.device = "cpu"
) -> Artifact:
    """Read an artifact; the model comes back in eval mode."""
    fs = fs or LocalFileSystem()
    try:
        with fs.open(posixpath.join(directory, CONFIG_FILE), "rb") as f:
            config = json.loads(f.read())
        with fs.open(posixpath.join(directory, WEIGHTS_FILE), "rb") as f:
            weights = f.read()
    except FileNotFoundError as e:
        raise ArtifactError(f"{directory}: not a model artifact (missing {e.filename})") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{directory}/{CONFIG_FILE}: invalid JSON ({e})") from e
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory}: unknown artifact format {config.get('format')!r} "
            f"version {config.get('format_version')!r}"
        )
    model_id = model_id_of(weights)
    if model_id != config["model_id"]:
        raise ArtifactError(
            f"{directory}: {WEIGHTS_FILE} has model_id {model_id}, but {CONFIG_FILE} says "
            f"{config['model_id']}: the weights were changed or the copy is incomplete"
        )
    try:
        state = load_safetensors(weights)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ArtifactError(f"{directory}/{WEIGHTS_FILE}: unreadable ({e})") from e
    model = ViTFIQA(ViTFIQAConfig.from_dict(config["architecture"]))
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return Artifact(
        model=model,
        model_id=model_id,
        preset=config.get("preset"),
        input=InputSpec.from_dict(config["input"]),
        training=config["training"],
    )
