"""`fiqa score`: stream a dataset through the model into the quality manifest (Iceberg)."""

from __future__ import annotations

import json
import posixpath

from pydantic import Field

from jobs.config import DataConfig, JsonSummary, TableConfig, configure_verb
from pipeline.scoring import ScorerSettings, ScoringPlan, score
from pipeline.storage import parse_uri


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
