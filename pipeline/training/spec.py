"""Every setting of a training run, declared once: `fiqa train` takes its flags from here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.presets import Mode
from pipeline.augment import AUGMENTATIONS, UTILITY_PRESERVING, check_augmentations
from pipeline.errors import FiqaError
from pipeline.evaluation.fr_models import FrModelSpec
from pipeline.formats import FormatName
from pipeline.settings import DEFAULT_PRESET, AutoCount, FormatOptions, Gpus, PresetName

# The chance that a training image gets a fresh degradation each epoch (`data.degraded`), in
# a run without a teacher; a teacher's degraded images are its labelled copies.
DEGRADE = 0.5


class TrainingError(FiqaError, RuntimeError):
    """A training run that cannot start (no data) or did not finish."""


class TrainSpec(BaseModel):
    """Everything a run needs but the storage credentials (`run.fit` takes those apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[str] = Field(min_length=1, description="training dataset URI(s), one format")
    format: FormatName = Field(description="format of the training data")
    format_options: FormatOptions = {}
    eval_data: str | None = Field(
        None, description="held-out identities for verification metrics each epoch"
    )
    eval_format: FormatName | None = Field(
        None, description="format of eval_data (default: format)"
    )
    holdout_fraction: float = Field(
        0.02, ge=0, lt=0.5, description="training images held out for the CR Spearman"
    )
    out: str = Field(description="artifact directory to write (local or s3://)")
    preset: PresetName = Field(DEFAULT_PRESET, description="architecture preset")
    mode: Mode = Field("token", description="token (ViT-FIQA), crfiqa or full")
    init_from: str | None = Field(None, description="start from this artifact's weights")
    loss: Literal["cosface", "arcface"] = Field("cosface", description="FR margin loss")
    alpha: float = Field(10.0, ge=0, description="weight of the quality regression")
    epochs: int = Field(20, gt=0, description="epochs")
    batch_size: int = Field(1024, gt=0, description="global batch (all workers together)")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(2.0, ge=0, description="linear warm-up, then decay to 0")
    clip_grad_norm: float = Field(5.0, gt=0, description="gradient clipping norm")
    augment: list[str] | None = Field(
        None,
        description=f"of {', '.join(AUGMENTATIONS)}; 'none' for none (default: all; with a "
        f"teacher, {', '.join(UTILITY_PRESERVING)}: the others change what the teacher measured)",
    )
    degrade: float | None = Field(
        None,
        ge=0,
        le=1,
        description="chance that a training image gets a fresh degradation each epoch (one "
        "of fiqa synth's, at a random severity), so the quality target sees what it costs "
        f"(default: {DEGRADE}; 0 with a teacher, whose copies are the degraded images)",
    )
    teacher: FrModelSpec | None = Field(
        None,
        description="a pretrained FR model whose CR is the quality target instead of the FR "
        "head's own: dlib (pip install '.[dlib]'), an .onnx file (YAML: its full spec) or an "
        "artifact",
        json_schema_extra={"metavar": "URI"},
    )
    teacher_copies: int = Field(
        1, ge=0, description="degraded copies of each training image the teacher labels"
    )
    shuffle_buffer: int = Field(4096, ge=0, description="rows in each worker's shuffle buffer")
    num_workers: AutoCount = Field(
        "auto",
        description="Ray Train workers, each holding a slice of the class centres: auto (one "
        "per GPU of the cluster, else 1) or N",
    )
    gpus: Gpus = Field(
        "auto",
        description="GPUs per worker (nccl, bf16 autocast): auto (1 when the cluster has GPUs, "
        "else 0) or N",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    storage_path: str = Field("runs", description="checkpoints and run state (local or s3://)")
    run_name: str | None = Field(
        None, description="run name; rerun with the same one to resume (default: timestamped)"
    )
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="also checkpoint every N steps (always at each epoch end)"
    )
    keep_checkpoints: int = Field(3, gt=0, description="checkpoints kept")
    max_failures: int = Field(2, ge=-1, description="worker failures recovered (-1: always)")
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and augmentation")

    @field_validator("teacher", mode="before")
    @classmethod
    def uri_is_spec(cls, value):
        return {"uri": value} if isinstance(value, str) else value

    @field_validator("augment")
    @classmethod
    def known_augmentations(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        return [] if names == ["none"] else list(check_augmentations(names))

    @model_validator(mode="after")
    def consistent(self):
        if self.num_workers != "auto" and self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by num_workers {self.num_workers}"
            )
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} > epochs {self.epochs}")
        return self

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The ones asked for; by default all, or with a teacher those that keep its CR true."""
        if self.augment is not None:
            return tuple(self.augment)
        return UTILITY_PRESERVING if self.teacher else AUGMENTATIONS
