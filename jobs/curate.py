"""`fiqa curate`: one scheduled curation run over the datasets of a YAML config."""

from __future__ import annotations

import json

from pydantic import Field, model_validator

from jobs.config import JsonSummary, TableConfig, configure_verb
from pipeline.curation import CurationPlan, curate
from pipeline.export import ExportSettings
from pipeline.maintenance import MaintenanceSettings
from pipeline.policy import FilterPolicy
from pipeline.scoring import ScorerSettings
from pipeline.selection import selection_name
from pipeline.settings import DataSettings

YAML_ONLY = {"cli": False}


class DatasetEntry(DataSettings):
    name: str = Field(description="dataset name in the manifest")


class ExportEntry(ExportSettings):
    out: str = Field(description="folder each selection snapshot's export goes under")


class CurateConfig(TableConfig, JsonSummary, ScorerSettings):
    model: str = Field(description="model artifact URI")
    datasets: list[DatasetEntry] = Field(
        description="datasets to curate: name, data, format, format_options (YAML only)",
        min_length=1,
        json_schema_extra=YAML_ONLY,
    )
    policy: FilterPolicy = Field(
        FilterPolicy(),
        description="filter policy rules, as in 'fiqa filter --policy' (YAML only)",
        json_schema_extra=YAML_ONLY,
    )
    selection: str = Field(description="selection name (a table beside the manifest)")
    export: ExportEntry | None = Field(
        None,
        description="export of each new selection: to, out, dataset, shard_size, with_bytes "
        "(YAML only)",
        json_schema_extra=YAML_ONLY,
    )
    report: str | None = Field(None, description="folder each selection's report goes under")
    run_log: str = Field("curation_runs", description="run-log table (bare: beside the manifest)")
    maintain: MaintenanceSettings | None = Field(
        None,
        description="maintain the manifest table after the outputs are written, as 'fiqa "
        "maintain': keep_last, expire_older_than, orphan_older_than, target_file_mb (YAML only)",
        json_schema_extra=YAML_ONLY,
    )

    @model_validator(mode="after")
    def distinct_names(self) -> CurateConfig:
        names = [d.name for d in self.datasets]
        if len(set(names)) < len(names):
            raise ValueError("datasets: every name must be different")
        return self

    def plan(self) -> CurationPlan:
        storage = self.storage()
        name = selection_name(self.table, self.selection)
        return CurationPlan(
            table=self.table,
            datasets=[
                self.scoring_plan(
                    model=self.model,
                    data=d.data,
                    format=d.format,
                    table=self.table,
                    dataset=d.name,
                    format_options=d.format_options,
                    storage=storage,
                    catalog=self.catalog,
                )
                for d in self.datasets
            ],
            policy=self.policy,
            selection=name,
            run_log=self.run_log
            if "." in self.run_log
            else f"{self.table.rpartition('.')[0]}.{self.run_log}",
            export=self.export and self.export.export_plan(name, storage, self.catalog),
            report=self.report,
            maintenance=self.maintain and self.maintain.maintenance_plan(),
            storage=storage,
            catalog=self.catalog,
        )


def run(config: CurateConfig) -> None:
    plan = config.plan()
    # Ray starts (or joins RAY_ADDRESS) on first use, after the checks that need no cluster.
    # A failed run is recorded in the run log, then its error ends the command (non-zero).
    summary = curate(plan, progress=print)
    for name, d in summary.datasets.items():
        print(
            f"  {name:<24} {d['shards_new']:>6} new shards  {d['images']:>9} images scored  "
            f"{d['errors']:>7} errors"
        )
    print(
        f"selection: {summary.selection} (snapshot {summary.selection_snapshot}): kept "
        f"{summary.images_kept}, dropped {summary.images_dropped}"
    )
    for kind, uri in summary.outputs.items():
        print(f"{kind}: {uri}")
    if config.json_output:
        print(json.dumps(summary.to_dict(), default=str))


def configure(parser) -> None:
    configure_verb(
        parser,
        CurateConfig,
        run,
        example="fiqa curate --config curate.yaml",
    )
