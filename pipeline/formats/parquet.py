"""Parquet datasets: one row per image, an image-bytes column and an identity column.

Column names are configurable; the image column may hold plain binary or the Hugging Face
image struct `{bytes, path}`. With a key column the image_id is its value, otherwise
`<file>#<row>`. Each file is one shard and is streamed by record batch.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.base import (
    DatasetFormat,
    DatasetWriter,
    Shard,
    ShardError,
    read_error,
    sample,
)

SHARD_PATTERN = "part-{:06d}.parquet"


class ParquetFormat(DatasetFormat):
    name = "parquet"

    def __init__(
        self,
        image_column: str = "image",
        identity_column: str | None = "identity",
        key_column: str | None = "image_id",
        batch_rows: int = 256,
    ):
        self.image_column, self.identity_column = image_column, identity_column
        self.key_column, self.batch_rows = key_column, batch_rows

    def list_shards(self, fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
        paths = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
        return [Shard(key=posixpath.relpath(p, root), path=p) for p in paths]

    def read_shard(self, fs: fsspec.AbstractFileSystem, root: str, shard: Shard) -> Iterator[dict]:
        with fs.open(shard.path, "rb") as f:
            try:
                parquet = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise ShardError(shard.key, f"not a readable Parquet file: {e}") from e
            names = parquet.schema_arrow.names
            if self.image_column not in names:
                raise ShardError(
                    shard.key,
                    f"no image column {self.image_column!r} (columns: {', '.join(names)})",
                )
            wanted = [
                c
                for c in (self.image_column, self.identity_column, self.key_column)
                if c and c in names
            ]
            row = 0
            try:
                for batch in parquet.iter_batches(batch_size=self.batch_rows, columns=wanted):
                    yield from self._rows(shard.key, batch, row)
                    row += batch.num_rows
            except (pa.ArrowException, OSError) as e:
                raise ShardError(shard.key, f"unreadable after row {row}: {e}") from e

    def _rows(self, shard: str, batch: pa.RecordBatch, first_row: int) -> Iterator[dict]:
        columns = batch.to_pydict()
        images = columns[self.image_column]
        identities = columns.get(self.identity_column, [None] * len(images))
        keys = columns.get(self.key_column) or [
            f"{shard}#{first_row + i}" for i in range(len(images))
        ]
        for key, identity, image in zip(keys, identities, images, strict=True):
            identity = None if identity is None else str(identity)
            if isinstance(image, dict):  # Hugging Face {bytes, path}
                image = image.get("bytes")
            if isinstance(image, bytes) and image:
                yield sample(str(key), shard, identity, image)
            else:
                yield read_error(str(key), shard, identity, "empty image cell")

    def writer(
        self, fs: fsspec.AbstractFileSystem, root: str, *, shard_size: int = 1000
    ) -> DatasetWriter:
        return ParquetWriter(fs, root, shard_size, self)


class ParquetWriter(DatasetWriter):
    def __init__(
        self, fs: fsspec.AbstractFileSystem, root: str, shard_size: int, fmt: ParquetFormat
    ):
        self.fs, self.root, self.shard_size, self.fmt = fs, root, shard_size, fmt
        self.rows: list[dict] = []
        self.shards = 0
        fs.makedirs(root, exist_ok=True)

    def write(
        self, key: str, identity: str | None, image: bytes, ext: str, meta: dict | None = None
    ) -> str:
        fmt = self.fmt
        row = {fmt.image_column: image}
        if fmt.identity_column:
            row[fmt.identity_column] = identity
        if fmt.key_column:
            row[fmt.key_column] = image_id = key
        else:  # the reader will name it by position
            image_id = f"{SHARD_PATTERN.format(self.shards)}#{len(self.rows)}"
        self.rows.append(row)
        if len(self.rows) == self.shard_size:
            self._flush()
        return image_id

    def _flush(self) -> None:
        path = posixpath.join(self.root, SHARD_PATTERN.format(self.shards))
        with self.fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist(self.rows), f)
        self.shards += 1
        self.rows = []

    def close(self) -> None:
        if self.rows:
            self._flush()
