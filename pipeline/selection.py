"""Selections: what a filter policy keeps of one model's view of the manifest.

A selection is an Iceberg table beside the manifest (in its namespace unless the name says
otherwise) with one row per manifest row the policy looked at: dataset, image_id, shard,
identity, status, quality, model_id, `keep`, and `reason` (`kept`, or the rule that dropped
the image). Each `fiqa filter` writes its rows as data files (one per bucket of identities,
`pipeline/filtering.py`) and replaces the table's files with them in one overwrite snapshot
whose summary holds `fiqa.selection`:
JSON with the manifest table, model_id, policy, the summary of the rows (counts by reason,
identities kept/dropped; `summarise`) and the sources of its datasets (URI, format, options),
so that `fiqa export` can find the images without being told where they are.
A write that loses a commit race to another raises CommitFailedException rather than being
replayed onto the other's rows (NO_REBASE, pipeline/catalog.py); `fiqa curate` then filters
again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, EqualTo
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import BooleanType, FloatType, NestedField, StringType

from pipeline.catalog import NO_REBASE, ensure_namespace, with_properties
from pipeline.datafiles import FileLayout, name_mapping, write_data_file
from pipeline.errors import FiqaError
from pipeline.storage import StorageOptions

KEPT = "kept"
INFO_PROPERTY = "fiqa.selection"

COLUMNS = (
    ("dataset", StringType(), pa.string()),
    ("image_id", StringType(), pa.string()),
    ("shard", StringType(), pa.string()),
    ("identity", StringType(), pa.string()),
    ("status", StringType(), pa.string()),
    ("quality", FloatType(), pa.float32()),
    ("model_id", StringType(), pa.string()),
    ("keep", BooleanType(), pa.bool_()),
    ("reason", StringType(), pa.string()),
)
ICEBERG_SCHEMA = Schema(
    *(NestedField(i, name, kind, required=False) for i, (name, kind, _) in enumerate(COLUMNS, 1))
)
ARROW_SCHEMA = pa.schema([(name, kind) for name, _, kind in COLUMNS])


class SelectionError(FiqaError, ValueError):
    """A selection that does not exist or was not written by `fiqa filter`."""


def selection_name(manifest_table: str, name: str) -> str:
    """`name` as a full table name: a bare name goes into the manifest's namespace. Queries
    expose selections by their bare names beside `manifest`, so that name is taken."""
    full = name if "." in name else f"{manifest_table.rpartition('.')[0]}.{name}"
    if full == manifest_table or full.rpartition(".")[2] == "manifest":
        raise SelectionError(f"{name!r} cannot name a selection: it is taken by the manifest")
    return full


@dataclass(frozen=True)
class Selection:
    name: str
    rows: pa.Table  # ARROW_SCHEMA, or the columns and rows asked for
    info: dict  # manifest, model_id, policy, summary, sources
    snapshot_id: int


def selection_table(catalog: Catalog, name: str) -> Table:
    """The selection table `name`, created if missing; refused if it holds anything else."""
    ensure_namespace(catalog, name.rpartition(".")[0])
    table = with_properties(
        catalog.create_table_if_not_exists(name, schema=ICEBERG_SCHEMA, properties=NO_REBASE),
        NO_REBASE,
    )
    current = table.current_snapshot()
    if current is not None and not current.summary.get(INFO_PROPERTY):
        raise SelectionError(f"{name} exists and is not a selection: refusing to replace it")
    return table


def commit_selection(
    catalog: Catalog, name: str, data_files: list[DataFile], summary: dict, info: dict
) -> tuple[int, dict]:
    """Replace the rows of selection `name` with `data_files` (written into its location) in
    one snapshot recording `info` and the rows' `summary`; returns the snapshot id and the
    recorded info. Commits only onto the snapshot the table was loaded at: a lost race
    deletes `data_files` and raises CommitFailedException."""
    sources = {d: s for d, s in info.get("sources", {}).items() if d in summary["datasets"]}
    info = {**info, "summary": summary, "sources": sources}
    table = selection_table(catalog, name)
    current = table.current_snapshot()
    properties = {INFO_PROPERTY: json.dumps(info, sort_keys=True)}
    try:
        with table.transaction() as transaction:
            if mapping := name_mapping(table):  # our files have no field ids: read by name
                transaction.set_properties(mapping)
            update = transaction.update_snapshot(properties)
            with update.overwrite() if current else update.fast_append() as replace:
                if current:
                    for old in table.scan(snapshot_id=current.snapshot_id).plan_files():
                        replace.delete_data_file(old.file)
                for data_file in data_files:
                    replace.append_data_file(data_file)
    except CommitFailedException:  # another run replaced the selection first
        for data_file in data_files:  # files no snapshot will reference
            table.io.delete(data_file.file_path)
        raise
    return table.current_snapshot().snapshot_id, info


def write_selection(
    catalog: Catalog,
    name: str,
    rows: pa.Table,
    info: dict,
    storage: StorageOptions | None = None,
) -> tuple[int, dict]:
    """Replace the selection `name` (created if missing) with `rows`, as `commit_selection`."""
    rows = rows.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
    layout = FileLayout.of(selection_table(catalog, name))
    return commit_selection(
        catalog, name, [write_data_file(rows, layout, storage)], summarise(rows), info
    )


def _current(catalog: Catalog, name: str) -> tuple[Table, Snapshot, dict]:
    try:
        table = catalog.load_table(name)
    except NoSuchTableError:
        raise SelectionError(f"no selection table {name!r}; run 'fiqa filter' first") from None
    snapshot = table.current_snapshot()
    info = snapshot and snapshot.summary.get(INFO_PROPERTY)
    if not info:
        raise SelectionError(f"{name} is not a selection written by 'fiqa filter'")
    return table, snapshot, json.loads(info)


def selection_info(catalog: Catalog, name: str) -> dict:
    """What `fiqa filter` recorded of selection `name`, without reading its rows."""
    return _current(catalog, name)[2]


def selection_head(catalog: Catalog, name: str) -> tuple[int, dict]:
    """Selection `name`'s current snapshot id and what was recorded with it."""
    _, snapshot, info = _current(catalog, name)
    return snapshot.snapshot_id, info


def load_selection(
    catalog: Catalog, name: str, *, kept_only: bool = False, columns: tuple[str, ...] = ()
) -> Selection:
    """The selection's rows (only the kept ones, only `columns` when given: the scan reads
    no more than that from storage)."""
    table, snapshot, info = _current(catalog, name)
    scan = table.scan(
        snapshot_id=snapshot.snapshot_id,
        row_filter=EqualTo("keep", True) if kept_only else AlwaysTrue(),
        selected_fields=columns or ("*",),
    )
    schema = pa.schema([ARROW_SCHEMA.field(c) for c in columns]) if columns else ARROW_SCHEMA
    return Selection(name, scan.to_arrow().cast(schema), info, snapshot.snapshot_id)


def summarise(rows: pa.Table) -> dict:
    """Counts by reason and identities kept/dropped (an identity is kept while any of its
    images is; rows without an identity count as images only), overall and per dataset."""

    def counts(part: pa.Table) -> dict:
        reasons = pc.value_counts(part["reason"]).to_pylist()
        labelled = part.filter(pc.is_valid(part["identity"]))  # no identity: none counted
        by_identity = labelled.group_by(["dataset", "identity"]).aggregate([("keep", "any")])
        kept_ids = pc.sum(by_identity["keep_any"].cast(pa.int64())).as_py() or 0
        kept = pc.sum(part["keep"].cast(pa.int64())).as_py() or 0
        return {
            "images": part.num_rows,
            "kept": kept,
            "dropped": part.num_rows - kept,
            "by_reason": dict(sorted((r["values"], r["counts"]) for r in reasons)),
            "identities": by_identity.num_rows,
            "identities_kept": kept_ids,
            "identities_dropped": by_identity.num_rows - kept_ids,
        }

    datasets = sorted(pc.unique(rows["dataset"]).to_pylist())
    return {
        **counts(rows),
        "datasets": {d: counts(rows.filter(pc.equal(rows["dataset"], d))) for d in datasets},
    }


def merge_summaries(parts: list[dict]) -> dict:
    """The summary of rows whose parts (`summarise` of each) share no identity."""
    datasets: dict[str, dict] = {}
    for part in parts:
        for dataset, counts in part["datasets"].items():
            datasets[dataset] = _add(datasets.get(dataset), counts)
    total = None
    for counts in datasets.values():
        total = _add(total, counts)
    return {**(total or _add(None, None)), "datasets": dict(sorted(datasets.items()))}


def _add(a: dict | None, b: dict | None) -> dict:
    a = a or {"by_reason": {}}
    b = b or {"by_reason": {}}
    counts = {
        key: a.get(key, 0) + b.get(key, 0)
        for key in ("images", "kept", "dropped", "identities", "identities_kept")
    }
    counts["identities_dropped"] = counts["identities"] - counts["identities_kept"]
    reasons = {
        r: a["by_reason"].get(r, 0) + b["by_reason"].get(r, 0)
        for r in {*a["by_reason"], *b["by_reason"]}
    }
    return {**counts, "by_reason": dict(sorted(reasons.items()))}
