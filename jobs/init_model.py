"""`fiqa init-model`: write a freshly initialised artifact."""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from jobs.config import JobConfig, configure_verb
from models.artifact import save_artifact
from models.presets import Mode
from models.vit_fiqa import create_model
from pipeline.settings import DEFAULT_PRESET, PresetName

log = logging.getLogger(__name__)


class InitModelConfig(JobConfig):
    preset: PresetName = Field(DEFAULT_PRESET, description="architecture preset")
    mode: Mode = Field("token", description="token (ViT-FIQA), crfiqa or full")
    out: str = Field(description="artifact directory to write")
    seed: int = Field(0, description="seed of the initialisation")


def run(config: InitModelConfig) -> None:
    torch.manual_seed(config.seed)
    model = create_model(config.preset, mode=config.mode)
    model_id = save_artifact(
        model, config.out, preset=config.preset, training={"initialised": {"seed": config.seed}}
    )
    log.info("initialised %s (%s mode), model_id %s", config.preset, config.mode, model_id)
    print(f"artifact: {config.out} (model_id {model_id})")


def configure(parser) -> None:
    configure_verb(
        parser,
        InitModelConfig,
        run,
        example="fiqa init-model --preset vit-fiqa-cpu --mode token --out models/fresh",
    )
