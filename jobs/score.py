"""`fiqa score`: stream a dataset through the model into the quality manifest (Iceberg)."""

from __future__ import annotations

import json
import logging
import posixpath

from pydantic import Field, field_validator

from jobs.config import (
    DataConfig,
    Gpus,
    JobConfig,
    JsonSummary,
    TableConfig,
    configure_verb,
    gpus_or_none,
)
from pipeline.scoring import ScoringPlan, score
from pipeline.storage import parse_uri

log = logging.getLogger(__name__)


class ScorerSettings(JobConfig):
    """How a scoring run uses the cluster: shared by `fiqa score` and `fiqa curate`."""

    with_embeddings: bool = Field(False, description="also store FR embeddings (float16)")
    batch_size: int = Field(128, gt=0, description="images per model call")
    decode_batch_size: int = Field(256, gt=0, description="images per decode task call")
    write_batch_size: int = Field(
        2048, gt=0, description="scored rows per writer call, split into one file per shard"
    )
    actors: str = Field(
        "auto",
        description="scorer actors: auto (one per GPU, else one per core), "
        "N, or MIN,MAX to autoscale",
    )
    cpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="CPUs reserved per scorer actor (default: 1 per GPU actor, "
        "a quarter CPU per torch thread of a CPU actor)",
    )
    gpus: Gpus = Field(
        "auto", description="GPUs per scorer actor: auto (1 when the cluster has GPUs, else 0) or N"
    )
    threads_per_actor: int | None = Field(
        None, ge=1, description="torch threads per CPU actor (default: the cores shared out)"
    )
    commit_every: int = Field(64, gt=0, description="commit once this many shards are done")
    commit_interval: float = Field(
        60.0, gt=0, description="or once this many seconds have passed since the last commit"
    )

    @field_validator("actors")
    @classmethod
    def actor_range(cls, value: str) -> str:
        if value == "auto":
            return value
        parts = value.split(",")
        if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError("expected auto, N or MIN,MAX with positive integers")
        if len(parts) == 2 and int(parts[0]) > int(parts[1]):
            raise ValueError("MIN must not exceed MAX")
        return value

    def scoring_plan(self, **where) -> ScoringPlan:
        """The plan for these settings; `where` names the model, data, table and catalog."""
        low, _, high = self.actors.partition(",")
        return ScoringPlan(
            with_embeddings=self.with_embeddings,
            batch_size=self.batch_size,
            decode_batch_size=self.decode_batch_size,
            write_batch_size=self.write_batch_size,
            actors=None if self.actors == "auto" else (int(low), int(high or low)),
            cpus_per_actor=self.cpus_per_actor,
            gpus_per_actor=gpus_or_none(self.gpus),
            threads_per_actor=self.threads_per_actor,
            commit_every=self.commit_every,
            commit_interval=self.commit_interval,
            **where,
        )


class ScoreConfig(DataConfig, TableConfig, JsonSummary, ScorerSettings):
    model: str = Field(description="model artifact URI")
    dataset: str | None = Field(
        None, description="dataset name in the manifest (default: the last part of --data)"
    )

    def plan(self) -> ScoringPlan:
        return self.scoring_plan(
            model=self.model,
            data=self.data,
            format=self.format,
            table=self.table,
            dataset=self.dataset or posixpath.basename(parse_uri(self.data).path),
            format_options=self.format_options,
            storage=self.storage(),
            catalog=self.catalog,
        )


def run(config: ScoreConfig) -> None:
    plan = config.plan()
    # Ray starts (or joins RAY_ADDRESS) on first use, after the checks that need no cluster.
    summary = score(plan, on_commit=print)
    statuses = ", ".join(f"{k} {v}" for k, v in summary.statuses.items()) or "nothing new"
    print(
        f"scored {summary.images} images of {plan.dataset} ({statuses}) in "
        f"{summary.seconds:.1f} s, {summary.images_per_s:.0f} images/s; "
        f"{summary.shards_skipped} of {summary.shards_total} shards were already committed"
    )
    print(
        f"table: {plan.table} (model_id {summary.model_id}, run {summary.run_id}, "
        f"{len(summary.snapshots)} snapshots, {summary.files} data files)"
    )
    if config.json_output:
        print(json.dumps(summary.to_dict()))


def configure(parser) -> None:
    configure_verb(
        parser,
        ScoreConfig,
        run,
        example="fiqa score --model models/vit-fiqa-s --data s3://faces/ms1mv2 "
        "--format rec --table faces.quality",
    )
