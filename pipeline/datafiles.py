"""Manifest data files: Parquet files that workers write and the driver appends to the table.

A worker writes rows of one (dataset, model_id) partition into a new Parquet file under the
table's data location and describes it for Iceberg (`DataFile`: path, row count, column
bounds) from the footer it has just written, so the driver never reads data files to commit
them: it appends the descriptions as one snapshot. A file that is never appended (its run
crashed, or another run committed its shard first) is not part of the table; `fiqa maintain`
removes such orphans.

The `shard` column's bounds are kept whole (not truncated to 16 characters, Iceberg's
default), so a file whose lower and upper bounds are equal is known from the table's
metadata alone to hold one shard: `committed_shards` reads no data for those.
"""

from __future__ import annotations

import contextlib
import pickle
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties

from pipeline.storage import StorageOptions, arrow_filesystem

# Table property: full (untruncated) bounds of the shard column.
FULL_SHARD_BOUNDS = {"write.metadata.metrics.column.shard": "full"}


@dataclass(frozen=True)
class FileLayout:
    """What a worker needs to write and describe data files of one table (picklable; the
    driver takes it from the table's metadata)."""

    location: str  # the table's data folder URI
    schema: Schema
    spec: PartitionSpec
    properties: dict[str, str]

    @classmethod
    def of(cls, table: Table) -> FileLayout:
        metadata = table.metadata
        location = table.location_provider().new_data_location("x").rsplit("/", 1)[0]
        return cls(location, metadata.schema(), metadata.spec(), dict(metadata.properties))

    def path(self, rows: pa.Table, name: str) -> str:
        """`<location>/<partition path>/<name>.parquet` for rows of one partition."""
        parts = []
        for field in self.spec.fields:
            source = self.schema.find_column_name(field.source_id)
            value = rows[source][0].as_py()
            parts.append(f"{field.name}={urllib.parse.quote(str(value), safe='')}")
        return "/".join([self.location, *parts, f"{name}.parquet"])


def write_data_file(
    rows: pa.Table, layout: FileLayout, storage: StorageOptions | None, prefix: str = ""
) -> DataFile:
    """Write `rows` (the table's columns, one partition) as a new Parquet file and describe it."""
    path = layout.path(rows, f"{prefix}{uuid.uuid4().hex}")
    fs, inner = arrow_filesystem(path, storage)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)  # a no-op on object storage
    collected: list[pq.FileMetaData] = []
    with fs.open_output_stream(inner) as out:
        pq.write_table(rows, out, compression="zstd", metadata_collector=collected)
    size = fs.get_file_info(inner).size
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=collected[0],
        stats_columns=compute_statistics_plan(layout.schema, layout.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(layout.schema),
    )
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=statistics.partition(layout.spec, layout.schema),
        file_size_in_bytes=size,
        sort_order_id=None,
        spec_id=layout.spec.spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )


def delete_data_files(data_files: Iterable[DataFile], storage: StorageOptions | None) -> None:
    """Delete files that no snapshot references (a run that failed or lost its commit)."""
    for data_file in data_files:
        fs, path = arrow_filesystem(data_file.file_path, storage)
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)


def pack(data_file: DataFile) -> bytes:
    """A DataFile as bytes, to travel from a worker to the driver inside an Arrow row."""
    return pickle.dumps(data_file)


def unpack(blob: bytes) -> DataFile:
    # Only ever bytes that this run's own workers produced with `pack`.
    return pickle.loads(blob)


def append_files(
    table: Table, data_files: Iterable[DataFile], snapshot_properties: dict[str, str]
) -> None:
    """Append already written data files to `table` as one snapshot. Commits only onto the
    snapshot `table` was loaded at: a concurrent commit raises CommitFailedException (the
    manifest's tables turn pyiceberg's replay off)."""
    with table.transaction() as transaction:
        if mapping := name_mapping(table):  # our files have no field ids: read by name
            transaction.set_properties(mapping)
        with transaction.update_snapshot(snapshot_properties).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)


def name_mapping(table: Table) -> dict[str, str]:
    """The table property that lets readers find the columns of files without field ids (ours)
    by name; empty when the table has it already."""
    if table.metadata.name_mapping() is not None:
        return {}
    mapping = table.metadata.schema().name_mapping.model_dump_json()
    return {TableProperties.DEFAULT_NAME_MAPPING: mapping}
