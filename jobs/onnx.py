"""`fiqa export-onnx`: the inference graph of an artifact as an ONNX file."""

from __future__ import annotations

import logging

from pydantic import Field

from jobs.config import JobConfig, configure_verb
from models.artifact import load_artifact
from models.onnx import export_onnx

log = logging.getLogger(__name__)


class ExportOnnxConfig(JobConfig):
    model: str = Field(description="artifact directory")
    out: str = Field(description="ONNX file to write")


def run(config: ExportOnnxConfig) -> None:
    artifact = load_artifact(config.model)
    export_onnx(artifact.model, artifact.input, config.out)
    size = artifact.input.size
    print(
        f"input 'image': uint8 (N, 3, {size}, {size}) RGB 0..255; outputs 'embedding' "
        f"(N, {artifact.model.config.fr_dim}) and 'quality' (N,)"
    )
    print(f"onnx: {config.out} (model_id {artifact.model_id})")


def configure(parser) -> None:
    configure_verb(
        parser,
        ExportOnnxConfig,
        run,
        example="fiqa export-onnx --model models/vit-fiqa-s --out vit-fiqa-s.onnx",
    )
