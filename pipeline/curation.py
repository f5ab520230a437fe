"""Scheduled curation: one idempotent run of score -> filter -> export -> report.

A run scores what is new in each dataset (`score` skips the shards the manifest already holds
for the model), applies the policy into the selection, exports it, writes the report,
maintains the manifest table when asked to (`pipeline/maintenance.py`) and records itself in
the run log (`pipeline/runlog.py`), whether it succeeded or failed.

The selection is rewritten only when the manifest's rows or the policy changed since it was
written (maintenance changes no row), or when its export or report is incomplete. Exports
and reports go under their folders into a place named after the selection snapshot they
show, so a rerun recognises finished outputs, and overlapping runs never write into the same
place.

Overlapping runs on one table: scoring commits only onto the snapshot it checked, so no
image is scored into the table twice; a selection write that loses a commit race is
recomputed on the new manifest snapshot; run-log appends are retried.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pyiceberg.exceptions import CommitFailedException

from pipeline.catalog import CatalogConfig, open_catalog
from pipeline.export import ExportPlan, export
from pipeline.export.base import RECORD
from pipeline.filtering import filter_manifest
from pipeline.maintenance import MaintenancePlan, maintain, same_rows
from pipeline.policy import FilterPolicy
from pipeline.report import INDEX, report_manifest
from pipeline.runlog import append_run
from pipeline.scoring import COMMIT_ATTEMPTS, ScoringPlan, score
from pipeline.selection import SelectionError, selection_head
from pipeline.status import OK
from pipeline.storage import StorageOptions, filesystem, parse_uri

SUCCEEDED, FAILED = "succeeded", "failed"


@dataclass(frozen=True)
class CurationPlan:
    table: str
    datasets: list[ScoringPlan]  # one per dataset, all with the same model and table
    policy: FilterPolicy  # model_id and datasets default to this run's model and datasets
    selection: str  # full table name
    run_log: str  # full table name
    export: ExportPlan | None = None  # `out`: the folder the exports go under
    report: str | None = None  # the folder the reports go under
    maintenance: MaintenancePlan | None = None  # run after the outputs are written
    storage: StorageOptions | None = None
    catalog: CatalogConfig = field(default_factory=CatalogConfig)


@dataclass
class CurationSummary:
    run_id: str
    started_at: datetime.datetime
    ended_at: datetime.datetime | None = None
    status: str = "running"
    error: str | None = None  # why the run failed
    model_id: str | None = None
    datasets: dict[str, dict] = field(default_factory=dict)  # per dataset: what scoring did
    selection: str | None = None
    selection_snapshot: int | None = None
    selection_written: bool = False  # False: the selection was already up to date
    images_kept: int | None = None
    images_dropped: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # export, report: URIs
    maintenance: dict | None = None  # what maintenance did (MaintenanceSummary)

    @property
    def images_scored(self) -> int:
        return sum(d["images"] for d in self.datasets.values())

    @property
    def images_errors(self) -> int:
        return sum(d["errors"] for d in self.datasets.values())

    def record(self) -> dict:
        """The run-log row."""
        return {
            **{k: v for k, v in dataclasses.asdict(self).items() if k != "selection_written"},
            "images_scored": self.images_scored,
            "images_errors": self.images_errors,
        }

    def to_dict(self) -> dict:
        return {**self.record(), "selection_written": self.selection_written}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def curate(plan: CurationPlan, progress: Callable[[str], None] = print) -> CurationSummary:
    """One curation run; recorded in the run log, and re-raising whatever made it fail."""
    summary = CurationSummary(run_id=uuid.uuid4().hex[:16], started_at=now())
    catalog = open_catalog(plan.catalog, plan.storage)
    try:
        for dataset in plan.datasets:
            scored = score(dataset, on_commit=progress)
            summary.model_id = scored.model_id
            summary.datasets[dataset.dataset] = {
                "shards_total": scored.shards_total,
                "shards_new": len(scored.shards_scored),
                "shards_skipped": scored.shards_skipped,
                "images": scored.images,
                "errors": sum(n for s, n in scored.statuses.items() if s != OK),
                "statuses": scored.statuses,
                "scoring_run_id": scored.run_id,
            }
        if not summary.images_scored:
            progress(
                f"nothing new: every shard of {', '.join(summary.datasets)} is already scored "
                f"for model {summary.model_id}"
            )
        policy = plan.policy.model_copy(
            update={
                "model_id": plan.policy.model_id or summary.model_id,
                "datasets": plan.policy.datasets or list(summary.datasets),
            }
        )
        select_and_publish(plan, policy, summary, progress)
        if plan.maintenance is not None:
            done = maintain(catalog, plan.table, plan.maintenance, plan.storage, progress)
            summary.maintenance = done.to_dict()
        summary.status = SUCCEEDED
    except BaseException as e:  # an interrupted run is a failed one too
        summary.status, summary.error = FAILED, f"{type(e).__name__}: {e}"
        raise
    finally:
        summary.ended_at = now()
        append_run(catalog, plan.run_log, summary.record())
        progress(f"run {summary.run_id} {summary.status}; recorded in {plan.run_log}")
    return summary


def select_and_publish(
    plan: CurationPlan,
    policy: FilterPolicy,
    summary: CurationSummary,
    progress: Callable[[str], None],
) -> None:
    """The selection, export and report, each left alone when it is already up to date."""
    catalog = open_catalog(plan.catalog, plan.storage)
    summary.selection = plan.selection
    current = current_selection(plan, policy)
    if current is not None and all(
        complete(plan, kind, uri) for kind, uri in outputs(plan, current[0]).items()
    ):
        snapshot, info = current
        progress(
            f"selection {plan.selection} is up to date (snapshot {snapshot}, over manifest "
            f"snapshot {info['manifest_snapshot']}); its outputs are complete"
        )
    else:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                result = filter_manifest(
                    catalog, plan.table, plan.selection, policy, plan.storage, progress=progress
                )
                break
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                progress(f"{plan.selection}: another run wrote it meanwhile; filtering again")
        snapshot, info = result.snapshot_id, result.info
        summary.selection_written = True
        progress(
            f"selection {plan.selection} (snapshot {snapshot}): kept {info['summary']['kept']} "
            f"of {info['summary']['images']} images"
        )
    summary.selection_snapshot = snapshot
    summary.images_kept = info["summary"]["kept"]
    summary.images_dropped = info["summary"]["dropped"]
    summary.outputs = outputs(plan, snapshot)
    if summary.selection_written and plan.export is not None:
        out = summary.outputs["export"]
        result = export(
            plan.export.model_copy(update={"selection": plan.selection, "out": out}), progress
        )
        if result.problems:
            progress(f"export: {len(result.problems)} kept images not exported ({RECORD})")
        progress(f"export: {result.images} images at {out}")
    if summary.selection_written and plan.report is not None:
        report = report_manifest(
            catalog,
            plan.table,
            summary.outputs["report"],
            selection=(plan.selection, info),
            model_id=policy.model_id,
            storage=plan.storage,
            progress=progress,
        )
        progress(f"report: {report.index}")


def current_selection(plan: CurationPlan, policy: FilterPolicy) -> tuple[int, dict] | None:
    """The selection's snapshot and info when it is what this run would write: the same
    policy over the rows of the manifest's current snapshot."""
    catalog = open_catalog(plan.catalog, plan.storage)
    try:
        snapshot, info = selection_head(catalog, plan.selection)
    except SelectionError:
        return None  # missing, or not a selection: writing it says which
    manifest = catalog.load_table(plan.table)
    if info["policy"] != policy.model_dump(exclude_none=True):
        return None
    if not same_rows(manifest, info["manifest_snapshot"]):
        return None
    return snapshot, info


def outputs(plan: CurationPlan, snapshot: int) -> dict[str, str]:
    """Where the export and the report of selection snapshot `snapshot` go."""
    paths = {}
    if plan.export is not None:
        name = str(snapshot)
        if not exports_folder(plan.export):
            name += ".txt" if plan.export.target == "list" else ".parquet"
        paths["export"] = parse_uri(plan.export.out).join(name).uri
    if plan.report is not None:
        paths["report"] = parse_uri(plan.report).join(str(snapshot)).uri
    return paths


def exports_folder(export: ExportPlan) -> bool:
    return export.target in ("rec-idx", "wds") or export.with_bytes


def complete(plan: CurationPlan, kind: str, uri: str) -> bool:
    """Whether an output was finished: the file each writes last is there."""
    fs, path = filesystem(uri, plan.storage)
    if kind == "report":
        return fs.exists(f"{path}/{INDEX}")
    return fs.exists(f"{path}/{RECORD}" if exports_folder(plan.export) else path)
