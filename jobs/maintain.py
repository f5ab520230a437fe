"""`fiqa maintain`: compact small data files, expire old snapshots, remove orphan files."""

from __future__ import annotations

import json

from pydantic import Field

from jobs.config import JsonSummary, TableConfig, configure_verb
from pipeline.catalog import open_catalog
from pipeline.maintenance import MaintenanceSettings, MaintenanceSummary, maintain

MORE = """\
more examples:
  # what a run would do, changing nothing
  fiqa maintain --table faces.quality --dry-run

  # keep the newest 20 snapshots and any of the last 3 days; compact files below 256 MiB
  fiqa maintain --table faces.quality --keep-last 20 --expire-older-than 3d \\
    --target-file-mb 256

  # time travel (fiqa query --as-of) works back to the oldest snapshot kept; to keep a
  # month of history:
  fiqa maintain --table faces.quality --expire-older-than 30d

Compaction replaces files and changes no row; a selection that 'fiqa curate' wrote stays up
to date through it. Files nothing references are removed only once older than
--orphan-older-than, so that a scoring run still writing keeps its files."""


class MaintainConfig(TableConfig, JsonSummary, MaintenanceSettings):
    dry_run: bool = Field(False, description="report what would be done, change nothing")


def run(config: MaintainConfig) -> None:
    storage = config.storage()
    catalog = open_catalog(config.catalog, storage)
    plan = config.maintenance_plan(config.dry_run)
    summary = maintain(catalog, config.table, plan, storage, progress=print)
    print_summary(summary)
    if config.json_output:
        print(json.dumps(summary.to_dict()))


def print_summary(summary: MaintenanceSummary) -> None:
    state = "unchanged (dry run)" if summary.dry_run else f"at snapshot {summary.snapshot}"
    print(
        f"table {summary.table} {state}: {summary.data_files_before} -> "
        f"{summary.data_files_after} data files; {summary.snapshots_retained} snapshots kept, "
        f"the oldest {summary.oldest_snapshot} ({summary.oldest_snapshot_at})"
    )
    print(f"location: {summary.location}")


def configure(parser) -> None:
    configure_verb(
        parser,
        MaintainConfig,
        run,
        example="fiqa maintain --table faces.quality --keep-last 100 --expire-older-than 7d",
    )
    parser.epilog += "\n\n" + MORE
