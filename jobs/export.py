"""`fiqa export`: turn a selection written by `fiqa filter` into a training set."""

from __future__ import annotations

import json

from pydantic import Field

from jobs.config import JsonSummary, TableConfig, configure_verb
from pipeline.export import ExportPlan, ExportSettings, ExportSummary, export
from pipeline.export.base import RECORD
from pipeline.selection import selection_name

SHOWN_PROBLEMS = 10  # the rest are in the summary


# The export settings first in the bases, so that their flags follow --table in the help.
class ExportConfig(ExportSettings, TableConfig, JsonSummary):
    selection: str = Field(
        description="selection table of 'fiqa filter' (a bare name is in --table's namespace)"
    )
    dry_run: bool = Field(
        False, description="plan the export and print its summary; read no image, write nothing"
    )

    def plan(self) -> ExportPlan:
        return self.export_plan(
            selection_name(self.table, self.selection),
            self.storage(),
            self.catalog,
            dry_run=self.dry_run,
        )


def run(config: ExportConfig) -> None:
    # Ray starts (or joins RAY_ADDRESS) on first use, by the targets that read images.
    summary = export(config.plan(), progress=print)
    print_summary(summary, config.dry_run)
    if config.json_output:
        print(json.dumps(summary.to_dict()))


def print_summary(summary: ExportSummary, dry_run: bool = False) -> None:
    if summary.problems:
        counts = ", ".join(f"{k} {v}" for k, v in summary.problem_counts().items())
        print(f"not exported: {len(summary.problems)} kept images ({counts})")
        for p in summary.problems[:SHOWN_PROBLEMS]:
            print(f"  {p['dataset']} {p['image_id']}: {p['problem']}: {p['message']}")
        if len(summary.problems) > SHOWN_PROBLEMS:
            if summary.target == "parquet" and not summary.shards:
                where = "the file's fiqa.export metadata"
            else:
                where = f"{RECORD} in the output"
            print(f"  ... and {len(summary.problems) - SHOWN_PROBLEMS} more, all in {where}")
    noun = "shards" if summary.target == "wds" else "parts"
    shards = f" in {len(summary.shards)} {noun}" if summary.shards else ""
    if dry_run:
        print(
            f"dry run: would export {summary.kept} kept images{shards} ({summary.selection}, "
            f"snapshot {summary.snapshot_id}) as {summary.target} to {summary.out}"
        )
        return
    print(
        f"exported {summary.images} of {summary.kept} kept images{shards} "
        f"({summary.selection}, snapshot {summary.snapshot_id}) as {summary.target}"
    )
    print(f"output: {summary.out}")


def configure(parser) -> None:
    configure_verb(
        parser,
        ExportConfig,
        run,
        example="fiqa export --selection ms1mv2_q30 --table faces.quality --to rec-idx "
        "--out s3://faces/ms1mv2-q30",
    )
