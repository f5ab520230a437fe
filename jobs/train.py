"""`fiqa train`: fit ViT-FIQA with Ray Train; resumes a run of the same name."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from jobs.config import AutoCount, Gpus, PresetName, StorageConfig, configure_verb, gpus_or_none
from models.presets import Mode
from pipeline.augment import AUGMENTATIONS, UTILITY_PRESERVING, check_augmentations
from pipeline.evaluation.fr_models import FrModelSpec
from pipeline.formats import FormatName
from pipeline.training import DEGRADE, DataSpec, TrainSpec, fit
from pipeline.verification import FMR

log = logging.getLogger(__name__)


class TrainConfig(StorageConfig):
    data: list[str] = Field(min_length=1, description="training dataset URI(s), one format")
    format: FormatName = Field(description="format of the training data")
    format_options: dict[str, Any] = Field(
        {}, description="format settings (YAML only)", json_schema_extra={"cli": False}
    )
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
    preset: PresetName = Field("vit-fiqa-cpu", description="architecture preset")
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

    def augmentations(self) -> tuple[str, ...]:
        """The ones asked for; by default all, or with a teacher those that keep its CR true."""
        if self.augment is not None:
            return tuple(self.augment)
        return UTILITY_PRESERVING if self.teacher else AUGMENTATIONS

    def spec(self) -> TrainSpec:
        storage = self.storage()
        return TrainSpec(
            train=DataSpec(self.format, tuple(self.data), storage, dict(self.format_options)),
            eval=DataSpec(self.eval_format or self.format, (self.eval_data,), storage)
            if self.eval_data
            else None,
            holdout_fraction=self.holdout_fraction,
            out=self.out,
            preset=self.preset,
            mode=self.mode,
            init_from=self.init_from,
            loss=self.loss,
            alpha=self.alpha,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            clip_grad_norm=self.clip_grad_norm,
            augmentations=self.augmentations(),
            degrade=self.degrade,
            teacher=self.teacher,
            teacher_copies=self.teacher_copies,
            shuffle_buffer=self.shuffle_buffer,
            num_workers=None if self.num_workers == "auto" else self.num_workers,
            gpus_per_worker=gpus_or_none(self.gpus),
            cpus_per_worker=self.cpus_per_worker,
            storage_path=self.storage_path,
            run_name=self.run_name or time.strftime("fiqa-train-%Y%m%d-%H%M%S"),
            checkpoint_every_steps=self.checkpoint_every_steps,
            keep_checkpoints=self.keep_checkpoints,
            max_failures=self.max_failures,
            seed=self.seed,
            storage=storage,
        )


def run(config: TrainConfig) -> None:
    spec = config.spec()
    print(f"run {spec.run_name} (rerun with --run-name {spec.run_name} to resume)")
    result = fit(spec)
    print(summary_table(result.summary["trained"]["epochs"][-1]))
    print(f"checkpoints: {result.run_path}")
    print(f"artifact: {result.out} (model_id {result.model_id})")


# (metric, label) of the final summary, in order; a metric the run did not measure is left out.
SUMMARY_ROWS = (
    ("loss", "loss"),
    ("ce", "  margin softmax (CE)"),
    ("quality_loss", "  quality regression"),
    ("accuracy", "training accuracy"),
    ("holdout_spearman", "held-out Spearman(quality, CR)"),
    ("verification_accuracy", "verification accuracy (eval data)"),
    ("tar_at_fmr", f"TAR at FMR {FMR:g} (eval data)"),
)


def summary_table(last: dict[str, float]) -> str:
    """The last epoch's loss parts and held-out metrics, one per line."""
    rows = [(label, last[key]) for key, label in SUMMARY_ROWS if key in last]
    width = max(len(label) for label, _ in rows)
    lines = [f"after epoch {last['epoch']}, step {last['step']}:"]
    lines += [f"  {label:<{width}}  {value:8.4f}" for label, value in rows]
    return "\n".join(lines)


def configure(parser) -> None:
    configure_verb(
        parser,
        TrainConfig,
        run,
        example="fiqa train --data s3://faces/train --format wds --eval-data s3://faces/eval "
        "--num-workers 2 --epochs 20 --storage-path s3://faces/runs --run-name v1 "
        "--out s3://faces/models/v1",
    )
