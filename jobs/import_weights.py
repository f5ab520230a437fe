"""`fiqa import-weights`: turn a third-party `.pt` state_dict into our artifact."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pydantic import Field

from jobs.config import JobConfig, configure_verb
from models.artifact import save_artifact
from models.weights import Source, import_weights
from pipeline.settings import PresetName

log = logging.getLogger(__name__)


class ImportWeightsConfig(JobConfig):
    source: Source = Field(
        description="layout of the file: an official ViT-FIQA release (mode detected from its "
        "keys) or an insightface arcface_torch ViT backbone (gets a new quality token and head)",
        json_schema_extra={"flag": "--from"},
    )
    path: str = Field(description="the .pt file", json_schema_extra={"positional": True})
    out: str = Field(description="artifact directory to write")
    preset: PresetName = Field("vit-fiqa-s", description="architecture the file must match")


def run(config: ImportWeightsConfig) -> None:
    path = Path(config.path)
    data = path.read_bytes()
    model = import_weights(config.source, data, preset=config.preset, name=str(path))
    provenance = {
        "source": config.source,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    model_id = save_artifact(
        model, config.out, preset=config.preset, training={"imported_from": provenance}
    )
    log.info("imported %s as %s (%s mode)", path, config.preset, model.config.mode)
    print(f"artifact: {config.out} (model_id {model_id}, {model.config.mode} mode)")


def configure(parser) -> None:
    configure_verb(
        parser,
        ImportWeightsConfig,
        run,
        example="fiqa import-weights --from official-vit-fiqa model.pt --out models/vit-fiqa-s",
    )
