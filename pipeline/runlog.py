"""The curation run log: one Iceberg row per `fiqa curate` run, beside the manifest.

Columns: run_id, started_at, ended_at (UTC), status (`succeeded` or `failed`), error (the
reason a run failed), model_id, images_scored and images_errors (rows this run committed, and
those of them whose status is not ok), datasets (JSON: per dataset shards total/new/skipped,
images, errors, the scoring run_id), selection, selection_snapshot, images_kept,
images_dropped, outputs (JSON: export and report URIs). Each row is one append snapshot whose
summary property `fiqa.curation` holds the same record as JSON. Appends commute, so one that
loses a commit race to another run is simply retried on the new head.
"""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from pipeline.catalog import ensure_namespace

RECORD_PROPERTY = "fiqa.curation"
APPEND_ATTEMPTS = 10

COLUMNS = (
    ("run_id", StringType(), pa.string()),
    ("started_at", TimestamptzType(), pa.timestamp("us", tz="UTC")),
    ("ended_at", TimestamptzType(), pa.timestamp("us", tz="UTC")),
    ("status", StringType(), pa.string()),
    ("error", StringType(), pa.string()),
    ("model_id", StringType(), pa.string()),
    ("images_scored", LongType(), pa.int64()),
    ("images_errors", LongType(), pa.int64()),
    ("datasets", StringType(), pa.string()),
    ("selection", StringType(), pa.string()),
    ("selection_snapshot", LongType(), pa.int64()),
    ("images_kept", LongType(), pa.int64()),
    ("images_dropped", LongType(), pa.int64()),
    ("outputs", StringType(), pa.string()),
)
ICEBERG_SCHEMA = Schema(
    *(NestedField(i, name, kind, required=False) for i, (name, kind, _) in enumerate(COLUMNS, 1))
)
ARROW_SCHEMA = pa.schema([(name, kind) for name, _, kind in COLUMNS])
JSON_COLUMNS = ("datasets", "outputs")


def open_run_log(catalog: Catalog, name: str) -> Table:
    namespace = name.rpartition(".")[0]
    ensure_namespace(catalog, namespace)
    return catalog.create_table_if_not_exists(name, schema=ICEBERG_SCHEMA)


def append_run(catalog: Catalog, name: str, record: dict) -> int:
    """Append one run's `record` (the columns; JSON columns as dicts); returns the snapshot."""
    row = {
        c: json.dumps(record[c], sort_keys=True) if c in JSON_COLUMNS else record[c]
        for c in ARROW_SCHEMA.names
    }
    rows = pa.Table.from_pylist([row], schema=ARROW_SCHEMA)
    properties = {RECORD_PROPERTY: json.dumps(record, sort_keys=True, default=str)}
    for attempt in itertools.count(1):
        table = open_run_log(catalog, name)
        try:
            table.append(rows, snapshot_properties=properties)
            return table.current_snapshot().snapshot_id
        except CommitFailedException:
            if attempt == APPEND_ATTEMPTS:
                raise


def read_runs(catalog: Catalog, name: str) -> list[dict]:
    """Every run recorded, oldest first, JSON columns decoded."""
    rows = open_run_log(catalog, name).scan().to_arrow().sort_by("started_at").to_pylist()
    for row in rows:
        for column in JSON_COLUMNS:
            row[column] = json.loads(row[column]) if row[column] else None
    return rows
