"""`fiqa maintain`: compact small data files, expire old snapshots, remove orphan files."""

from __future__ import annotations

import datetime
import json
import re

from pydantic import Field, field_validator

from jobs.config import JobConfig, JsonSummary, TableConfig, configure_verb
from pipeline.catalog import open_catalog
from pipeline.maintenance import MaintenancePlan, MaintenanceSummary, MiB, maintain

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

AGE = re.compile(r"(\d+)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> datetime.timedelta:
    """`30m`, `36h`, `7d`, `2w` (or `0`) as a timedelta."""
    if text == "0":
        return datetime.timedelta(0)
    match = AGE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an age such as 30m, 36h, 7d or 2w")
    return datetime.timedelta(**{UNITS[match[2]]: int(match[1])})


def parse_cutoff(text: str, now: datetime.datetime) -> datetime.datetime:
    """An age before `now`, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return now - parse_age(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (30m, 36h, 7d, 2w) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class MaintenanceSettings(JobConfig):
    """How much history to keep and how to compact: shared by `fiqa maintain` and
    `fiqa curate` (its `maintain:` entry)."""

    keep_last: int = Field(100, ge=1, description="always keep the newest N snapshots")
    expire_older_than: str = Field(
        "7d",
        description="expire the snapshots beyond --keep-last that are older than this: an age "
        "(30m, 36h, 7d, 2w) or an ISO 8601 time (UTC)",
    )
    orphan_older_than: str = Field(
        "3d",
        description="remove files that nothing references once they are older than this age "
        "(younger ones may belong to a scoring run still writing)",
    )
    target_file_mb: int = Field(
        128, gt=0, description="compact data files smaller than this (MiB) into files this big"
    )

    @field_validator("expire_older_than")
    @classmethod
    def cutoff(cls, value: str) -> str:
        parse_cutoff(value, datetime.datetime.now(datetime.UTC))
        return value

    @field_validator("orphan_older_than")
    @classmethod
    def age(cls, value: str) -> str:
        parse_age(value)
        return value

    def maintenance_plan(self, dry_run: bool = False) -> MaintenancePlan:
        now = datetime.datetime.now(datetime.UTC)
        return MaintenancePlan(
            keep_last=self.keep_last,
            expire_before=parse_cutoff(self.expire_older_than, now),
            orphan_age=parse_age(self.orphan_older_than),
            target_file_size=self.target_file_mb * MiB,
            dry_run=dry_run,
        )


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
