"""`fiqa report`: a static HTML report over a manifest snapshot, a selection and an evaluation."""

from __future__ import annotations

from pydantic import Field

from jobs.config import ConfigError, TableConfig, configure_verb
from pipeline.catalog import open_catalog
from pipeline.evaluation.results import EdcError, load_edc
from pipeline.report import report_manifest
from pipeline.selection import selection_info, selection_name


class ReportConfig(TableConfig):
    snapshot: int | None = Field(None, description="report on this manifest snapshot id")
    selection: str | None = Field(
        None, description="also show what this selection (written by 'fiqa filter') kept"
    )
    eval_result: str | None = Field(
        None,
        description="evaluation result JSON whose EDC curves to plot (format: docs/report.md)",
        json_schema_extra={"flag": "--eval", "metavar": "RESULT.json"},
    )
    model_id: str | None = Field(
        None,
        description="model whose example images to show (default: the selection's, else the "
        "newest)",
    )
    out: str = Field(description="report directory (index.html and its images)")


def run(config: ReportConfig) -> None:
    storage = config.storage()
    edc = None
    if config.eval_result is not None:
        try:
            edc = load_edc(config.eval_result, storage)
        except EdcError as e:  # the file is a setting: report it as one, before any query
            raise ConfigError(f"invalid configuration:\n  eval_result (--eval): {e}") from None
    catalog = open_catalog(config.catalog, storage)
    selection = None
    if config.selection is not None:
        name = selection_name(config.table, config.selection)
        selection = (name, selection_info(catalog, name))
    summary = report_manifest(
        catalog,
        config.table,
        config.out,
        selection=selection,
        snapshot_id=config.snapshot,
        edc=edc,
        model_id=config.model_id,
        storage=storage,
    )
    if summary.thumbnails_missing:
        print(
            f"{summary.thumbnails_missing} of {summary.thumbnails} example images could not "
            "be fetched (placeholders shown)"
        )
    print(f"report of {config.table} (snapshot {summary.snapshot_id}): {summary.index}")


def configure(parser) -> None:
    configure_verb(
        parser,
        ReportConfig,
        run,
        example="fiqa report --table faces.quality --selection ms1mv2_clean "
        "--eval edc.json --out reports/ms1mv2",
    )
