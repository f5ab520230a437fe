"""Every setting of an evaluation, declared once: `fiqa eval` takes its flags from here."""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from pipeline.errors import FiqaError
from pipeline.evaluation.fr_models import FrModelSpec
from pipeline.evaluation.methods import CRFIQA, METHODS, VIT_FIQA
from pipeline.evaluation.pairs import IMPOSTORS, MAX_GENUINE
from pipeline.settings import DataSettings, Gpus, gpus_or_none


class EvaluationError(FiqaError, ValueError):
    """An evaluation that cannot run as asked (bad method list, unusable dataset)."""


class EvaluationPlan(DataSettings):
    """Everything an evaluation needs but the storage settings (`evaluate` takes those apart)."""

    model: str = Field(description="the token-mode model artifact to evaluate")
    fr_models: list[FrModelSpec] = Field(
        [],
        description="more FR models: artifact directories, .onnx files (YAML: full specs "
        "with size, mean, std, colour_order, layout, dtype) or dlib (pip install '.[dlib]')",
        json_schema_extra={"flag": "--fr-model", "metavar": "URI"},
    )
    crfiqa_model: str | None = Field(None, description="a crfiqa-mode artifact to compare")
    methods: list[str] | None = Field(
        None,
        description=f"quality methods (default: all that apply of {', '.join(METHODS)})",
    )
    fmr: list[float] = Field([1e-3, 1e-4], description="FMRs the thresholds are fixed at")
    discard_limit: list[float] = Field([0.2, 0.3], description="pAUC discard limits")
    max_genuine: int = Field(MAX_GENUINE, gt=0, description="cap on genuine comparisons")
    impostors: int = Field(IMPOSTORS, gt=0, description="impostor comparisons sampled")
    bootstrap: int = Field(
        200, ge=0, description="identity resamples for 95% intervals of each pAUC (0: none)"
    )
    ser_fiq_passes: int = Field(100, ge=2, description="SER-FIQ dropout passes (T)")
    ser_fiq_dropout: float = Field(0.5, gt=0, lt=1, description="SER-FIQ dropout rate")
    batch_size: int = Field(128, gt=0, description="images per model call")
    gpus: Gpus = Field(
        "auto", description="the GPU this process uses: auto (one when torch sees one), 0 or 1"
    )
    seed: int = Field(0, description="seed of pair sampling, random quality and dropout")

    @field_validator("fr_models", mode="before")
    @classmethod
    def uris_are_specs(cls, values):
        return [{"uri": v} if isinstance(v, str) else v for v in values or []]

    @field_validator("fmr")
    @classmethod
    def rates(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 < v < 1 for v in values):
            raise ValueError("FMRs must lie in (0, 1)")
        return values

    @field_validator("discard_limit")
    @classmethod
    def limits(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError("discard limits must lie in (0, 1]")
        return values

    def device(self) -> str:
        """Where the models run: this process's GPU or its CPU."""
        available = torch.cuda.is_available()
        gpus = gpus_or_none(self.gpus)
        if gpus is None:
            return "cuda" if available else "cpu"
        if gpus and not available:
            raise EvaluationError(f"gpus {gpus:g} asks for a GPU, and torch sees none")
        return "cuda" if gpus else "cpu"

    def wanted_methods(self) -> list[str]:
        if self.methods is None:
            return [m for m in METHODS if m != CRFIQA or self.crfiqa_model]
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise EvaluationError(
                f"unknown quality method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}"
            )
        if CRFIQA in self.methods and not self.crfiqa_model:
            raise EvaluationError(f"method {CRFIQA} needs a crfiqa-mode artifact")
        return list(dict.fromkeys([VIT_FIQA, *self.methods]))
