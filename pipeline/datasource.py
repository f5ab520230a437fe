"""A Ray Data datasource over our dataset formats: one read task per shard.

Shards are listed on the driver (files, never images); each read task opens its own
filesystem from the URI and storage options, streams the shard's sample rows and emits them
in Arrow blocks of `rows_per_block`. A shard that breaks part-way (`ShardError`) adds one
`read_error` row whose image_id is the shard key, so the failure is recorded, not raised.
Scoring reads with `mark_end`: each shard's last row carries the shard's row count.
`wanted_rows` reads a shard only until the images wanted from it have come by, for exports'
tasks; `fetch_images` reads a handful on the driver (report thumbnails) as their format
locates them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.cluster import connect
from pipeline.formats import get_format
from pipeline.formats.base import SAMPLE_SCHEMA, Shard, ShardError, read_error, wanted_of
from pipeline.status import OK
from pipeline.storage import StorageOptions, filesystem

# Scoring reads with `mark_end`: each shard's last row carries the shard's row count, so
# downstream stages know when every row of a shard has passed.
END_FIELD = pa.field("shard_rows", pa.int64())
MARKED_SCHEMA = SAMPLE_SCHEMA.append(END_FIELD)


def shard_rows(
    format_name: str, format_options: dict, uri: str, storage: StorageOptions | None, shard: Shard
) -> Iterator[dict]:
    """Every row of one shard, a shard-level failure included as a final row."""
    fmt = get_format(format_name, **format_options)
    fs, root = filesystem(uri, storage)
    try:
        yield from fmt.read_shard(fs, root, shard)
    except ShardError as e:
        yield read_error(shard.key, shard.key, None, f"shard error: {e.reason}")


def wanted_rows(
    format_name: str,
    format_options: dict,
    uri: str,
    storage: StorageOptions | None,
    shard: Shard,
    image_ids: Collection[str],
) -> Iterator[dict]:
    """The rows of `shard` whose image_id is in `image_ids`, in the reader's order; reading
    stops once all of them have come by. A shard-level failure ends it with its `read_error`
    row (image_id: the shard key), as in `shard_rows`."""
    rows = shard_rows(format_name, format_options, uri, storage, shard)
    yield from wanted_of(rows, image_ids, shard.key)


def fetch_images(
    format_name: str,
    format_options: dict,
    uri: str,
    storage: StorageOptions | None,
    wanted: Mapping[str, Collection[str]],
) -> dict[str, bytes]:
    """Encoded bytes of a few images, `wanted` as shard key -> image_ids, as the format reads
    them (`read_images`). An image that cannot be read is left out of the result."""
    fs, root = filesystem(uri, storage)
    rows = get_format(format_name, **format_options).read_images(fs, root, wanted)
    return {r["image_id"]: r["image"] for r in rows if r["status"] == OK}


def blocks(rows: Iterator[dict], rows_per_block: int, mark_end: bool = False) -> Iterator[pa.Table]:
    """Arrow blocks of `rows`. With `mark_end`, column `shard_rows` says where the shard ends:
    on its last row, how many rows it yielded; 0 on every other row. A full block is only let
    go when the next row has come, so the last row is known to be the last."""
    batch: list[dict] = []
    total = 0
    for row in rows:
        if len(batch) == rows_per_block:
            yield _block(batch, mark_end, 0)
            batch = []
        batch.append(row)
        total += 1
    if batch:
        yield _block(batch, mark_end, total)


def _block(rows: list[dict], mark_end: bool, total: int) -> pa.Table:
    block = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    if not mark_end:
        return block
    ends = [0] * len(rows)
    ends[-1] = total
    return block.append_column(END_FIELD, pa.array(ends, pa.int64()))


class ShardDatasource(Datasource):
    def __init__(
        self,
        format_name: str,
        uri: str,
        *,
        storage: StorageOptions | None = None,
        format_options: dict | None = None,
        shards: list[Shard] | None = None,
        rows_per_block: int = 256,
        mark_end: bool = False,
    ):
        self.format_name, self.uri, self.storage = format_name, uri, storage
        self.format_options = format_options or {}
        self.rows_per_block, self.mark_end = rows_per_block, mark_end
        if shards is None:
            fs, root = filesystem(uri, storage)
            shards = get_format(format_name, **self.format_options).list_shards(fs, root)
        self.shards = shards

    def get_name(self) -> str:
        return f"Read{self.format_name.capitalize()}Shards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        # The shard is the unit of work (and of exactly-once commits), so the requested
        # parallelism does not split or merge shards.
        return [self._task(shard, per_task_row_limit) for shard in self.shards]

    def _task(self, shard: Shard, row_limit: int | None) -> ReadTask:
        args = (self.format_name, self.format_options, self.uri, self.storage, shard)
        size, mark_end = self.rows_per_block, self.mark_end

        def read() -> Iterator[pa.Table]:
            yield from blocks(shard_rows(*args), size, mark_end)

        metadata = BlockMetadata(
            num_rows=None, size_bytes=None, exec_stats=None, input_files=[shard.path]
        )
        schema = MARKED_SCHEMA if mark_end else SAMPLE_SCHEMA
        return ReadTask(read, metadata, schema=schema, per_task_row_limit=row_limit)


def read_shards(source: ShardDatasource) -> ray.data.Dataset:
    """A Ray dataset of sample rows (`formats.base.SAMPLE_SCHEMA`) from `source`."""
    connect()
    # One block stream per shard: Ray would otherwise split small shards into many tiny
    # blocks to reach its default parallelism, which only adds scheduling overhead.
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.shards)))


def read_samples(format_name: str, uri: str, **options) -> ray.data.Dataset:
    """Sample rows of the dataset at `uri`; `options` are ShardDatasource's."""
    return read_shards(ShardDatasource(format_name, uri, **options))
