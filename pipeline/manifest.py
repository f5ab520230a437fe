"""The quality manifest: one Iceberg table row per (dataset, image_id, model_id).

Columns: dataset, image_id, shard, identity, status, error, quality (float32, null unless
status is ok), width, height, model_id, run_id, scored_at (UTC), embedding (null unless the
run asked for it: the FR embedding as little-endian float16 bytes, Iceberg having no float16).
Partitioned by dataset and model_id, so one model's view of one dataset is one partition.

Exactly once: a scoring run commits groups of whole shards, one snapshot each. A shard is
committed when the table holds any row of it for that (dataset, model_id): its rows only
ever arrive together in one snapshot. That is asked of the table itself, not of a side file,
and mostly of its metadata: scoring writes one shard per data file, with whole shard bounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, BooleanExpression, EqualTo
from pyiceberg.expressions.visitors import (
    expression_evaluator,
    inclusive_projection,
    manifest_evaluator,
)
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    BinaryType,
    FloatType,
    IntegerType,
    NestedField,
    StringType,
    TimestamptzType,
)

from pipeline.catalog import NO_REBASE, ensure_namespace, with_properties
from pipeline.datafiles import FULL_SHARD_BOUNDS
from pipeline.storage import parse_uri

COLUMNS = (
    ("dataset", StringType(), pa.string()),
    ("image_id", StringType(), pa.string()),
    ("shard", StringType(), pa.string()),
    ("identity", StringType(), pa.string()),
    ("status", StringType(), pa.string()),
    ("error", StringType(), pa.string()),
    ("quality", FloatType(), pa.float32()),
    ("width", IntegerType(), pa.int32()),
    ("height", IntegerType(), pa.int32()),
    ("model_id", StringType(), pa.string()),
    ("run_id", StringType(), pa.string()),
    ("scored_at", TimestamptzType(), pa.timestamp("us", tz="UTC")),
    ("embedding", BinaryType(), pa.binary()),
)
ICEBERG_SCHEMA = Schema(
    *(NestedField(i, name, kind, required=False) for i, (name, kind, _) in enumerate(COLUMNS, 1))
)
ARROW_SCHEMA = pa.schema([(name, kind) for name, _, kind in COLUMNS])
PARTITION_SPEC = PartitionSpec(
    PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="dataset"),
    PartitionField(source_id=10, field_id=1001, transform=IdentityTransform(), name="model_id"),
)
DEFAULT_TABLE = "fiqa.manifest"
PROPERTIES = {**NO_REBASE, **FULL_SHARD_BOUNDS}


def open_table(catalog: Catalog, name: str = DEFAULT_TABLE) -> Table:
    """The manifest table `namespace.table`, created (with its namespace) if missing."""
    namespace, _, table = name.rpartition(".")
    if not namespace or not table:
        raise ValueError(f"table name {name!r} must be 'namespace.table'")
    try:
        return with_properties(catalog.load_table(name), PROPERTIES)
    except NoSuchTableError:
        pass
    ensure_namespace(catalog, namespace)
    return catalog.create_table_if_not_exists(
        name, schema=ICEBERG_SCHEMA, partition_spec=PARTITION_SPEC, properties=PROPERTIES
    )


def partition_files(table: Table, dataset: str, model_id: str) -> Iterator[DataFile]:
    """The data files of the (dataset, model_id) partition in the current snapshot."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return iter(())
    wanted = And(EqualTo("dataset", dataset), EqualTo("model_id", model_id))
    return snapshot_files(table, snapshot.snapshot_id, wanted)


def snapshot_files(
    table: Table, snapshot_id: int | None, partitions: BooleanExpression
) -> Iterator[DataFile]:
    """The data files of a snapshot in the partitions that `partitions` (an expression over
    dataset and model_id) selects, one manifest file read at a time (manifests of other
    partitions are skipped unread)."""
    if snapshot_id is None:
        return
    schema = table.schema()
    for manifest in table.snapshot_by_id(snapshot_id).manifests(table.io):
        spec = table.specs()[manifest.partition_spec_id]
        partition_filter = inclusive_projection(schema, spec)(partitions)
        if not manifest_evaluator(spec, schema, partition_filter, True)(manifest):
            continue
        partition_schema = Schema(*spec.partition_type(schema).fields)
        in_partition = expression_evaluator(partition_schema, partition_filter, True)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            data_file = entry.data_file
            if data_file.content == DataFileContent.DATA and in_partition(data_file.partition):
                yield data_file


def committed_shards(table: Table, dataset: str, model_id: str) -> set[str]:
    """Shards of `dataset` whose rows for `model_id` are in the table's current snapshot.

    Memory grows with shards, not rows: a data file whose shard bounds are equal holds that
    one shard, known from the metadata; any other file (written by older versions, or
    compacted) has its shard column read, one row group at a time."""
    shard_id = table.schema().find_field("shard").field_id
    shards: set[str] = set()
    for data_file in partition_files(table, dataset, model_id):
        lower, upper = data_file.lower_bounds.get(shard_id), data_file.upper_bounds.get(shard_id)
        if lower is not None and lower == upper:
            shards.add(lower.decode())
            continue
        with table.io.new_input(data_file.file_path).open() as stream:
            for batch in pq.ParquetFile(stream).iter_batches(columns=["shard"]):
                shards.update(pc.unique(batch.column(0)).to_pylist())
    return shards


def shards_committed_since(
    table: Table, since: Snapshot | None, dataset: str, model_id: str
) -> set[str]:
    """Shards of `dataset` that scoring runs committed for `model_id` after snapshot `since`,
    read from the new snapshots' summaries (`fiqa.shards`) after refreshing `table`; when
    `since` is no longer an ancestor (history rewritten), from the rows themselves."""
    table.refresh()
    shards: set[str] = set()
    snapshot = table.current_snapshot()
    while snapshot is not None and (since is None or snapshot.snapshot_id != since.snapshot_id):
        summary = snapshot.summary
        if summary.get("fiqa.dataset") == dataset and summary.get("fiqa.model_id") == model_id:
            shards.update(json.loads(summary.get("fiqa.shards", "[]")))
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    if since is not None and snapshot is None:
        return committed_shards(table, dataset, model_id)
    return shards


def dataset_source(data: str, format: str, format_options: dict) -> dict:
    """What a scoring snapshot records of where its images are (`fiqa.source`); a local path
    is made absolute so that later jobs find it from any working directory."""
    if parse_uri(data).protocol == "file" and "://" not in data:
        data = os.path.abspath(data)
    return {"data": data, "format": format, "format_options": format_options}


def dataset_sources(table: Table) -> dict[str, dict]:
    """Each dataset's newest recorded source, from the scoring snapshots' summaries."""
    sources: dict[str, dict] = {}
    for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        summary = snapshot.summary
        dataset, source = summary.get("fiqa.dataset"), summary.get("fiqa.source")
        if dataset and source and dataset not in sources:
            sources[dataset] = json.loads(source)
    return sources


def embedding_bytes(embeddings: np.ndarray) -> list[bytes]:
    """Rows of float32 embeddings as little-endian float16 bytes."""
    half = np.ascontiguousarray(embeddings, dtype="<f2")
    return [row.tobytes() for row in half]


def embedding_array(values: list[bytes]) -> np.ndarray:
    """The inverse of `embedding_bytes`: (N, dim) float16."""
    return np.stack([np.frombuffer(v, dtype="<f2") for v in values])
