"""`fiqa inspect`: what a dataset holds."""

from __future__ import annotations

import json

from pydantic import Field

from jobs.config import DataConfig, JsonSummary, configure_verb
from pipeline.cluster import connect
from pipeline.inspection import inspect_dataset


class InspectConfig(DataConfig, JsonSummary):
    show: int = Field(0, ge=0, description="also list the first N rows")


def run(config: InspectConfig) -> None:
    connect()
    summary = inspect_dataset(
        config.format,
        config.data,
        storage=config.storage(),
        format_options=config.format_options,
        show=config.show,
    )
    print(
        f"dataset {summary.uri} ({summary.format}): {summary.shards} shards, "
        f"{summary.images} images, {summary.identities} identities"
    )
    if summary.shard_errors:
        print(f"  {summary.shard_errors} shards broke part-way (see read_error rows)")
    for status, count in summary.statuses.items():
        print(f"  status {status:<12} {count}")
    for bucket, count in summary.sizes.items():
        print(f"  size {bucket:<14} {count}")
    for row in summary.examples:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    if config.json_output:
        print(json.dumps(summary.to_dict()))


def configure(parser) -> None:
    configure_verb(
        parser,
        InspectConfig,
        run,
        example="fiqa inspect --data s3://faces/ms1mv2 --format rec --json",
    )
