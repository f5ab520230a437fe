"""Folder datasets: `<root>/<identity>/<file>`, one sub-folder per identity.

Listing billions of objects on every run is not an option, so a folder is listed once by
`fiqa index` into Parquet index shards (columns `path` relative to the root, `identity`,
`size`), written to `<root>/_index/` unless told otherwise. Those index files are the shards.
A folder without an index is listed on the spot, which suits small datasets only.
image_id is the path relative to the root.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Iterable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.base import DatasetFormat, DatasetWriter, Shard, read_error, sample
from pipeline.formats.wds import IMAGE_EXTENSIONS
from pipeline.storage import parse_uri

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
INDEX_PATTERN = "part-{:06d}.parquet"
INDEX_SCHEMA = pa.schema([("path", pa.string()), ("identity", pa.string()), ("size", pa.int64())])
FETCH_BATCH = 64  # objects fetched concurrently per request batch (s3fs runs them in parallel)


def is_image(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def list_images(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, str, int]]:
    """(relative path, identity, size) of every image two levels below `root`, sorted."""
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = posixpath.relpath(path, root)
        parts = relative.split("/")
        if len(parts) == 2 and is_image(path):
            yield relative, parts[0], int(info.get("size") or 0)


def write_index(
    fs: fsspec.AbstractFileSystem,
    root: str,
    out: str | None = None,
    *,
    rows_per_shard: int = 100_000,
) -> list[str]:
    """List the folder once into Parquet index shards; returns their paths."""
    out = out or posixpath.join(root, INDEX_DIR)
    fs.makedirs(out, exist_ok=True)
    paths, rows = [], []

    def flush() -> None:
        path = posixpath.join(out, INDEX_PATTERN.format(len(paths)))
        table = pa.Table.from_pylist(
            [{"path": p, "identity": i, "size": s} for p, i, s in rows], schema=INDEX_SCHEMA
        )
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
        paths.append(path)
        rows.clear()

    for row in list_images(fs, root):
        rows.append(row)
        if len(rows) == rows_per_shard:
            flush()
    if rows or not paths:
        flush()
    return paths


class FolderFormat(DatasetFormat):
    name = "folder"

    def __init__(self, index: str | None = None, files_per_shard: int = 1000):
        """`index`: URI of the index written by `fiqa index` (default `<root>/_index`), on
        the same storage as the folder."""
        self.index = parse_uri(index).path if index else None
        self.files_per_shard = files_per_shard

    def _index_dir(self, root: str) -> str:
        return self.index or posixpath.join(root, INDEX_DIR)

    def list_shards(self, fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
        index = self._index_dir(root)
        if fs.exists(index):
            files = sorted(p for p in fs.ls(index, detail=False) if p.endswith(".parquet"))
            return [Shard(key=posixpath.relpath(p, root), path=p) for p in files]
        log.warning("%s has no index; listing it now (run 'fiqa index' once for big folders)", root)
        images = [p for p, _, _ in list_images(fs, root)]
        return [
            Shard(
                key=f"list#{start}",
                path=root,
                start=start,
                stop=min(start + self.files_per_shard, len(images)),
            )
            for start in range(0, len(images), self.files_per_shard)
        ]

    def read_shard(self, fs: fsspec.AbstractFileSystem, root: str, shard: Shard) -> Iterator[dict]:
        yield from fetch(fs, root, shard.key, self._entries(fs, root, shard))

    def _entries(self, fs, root: str, shard: Shard) -> Iterable[tuple[str, str]]:
        if shard.path == root:  # an unindexed listing range
            images = list(list_images(fs, root))[shard.start : shard.stop]
            return [(p, identity) for p, identity, _ in images]
        with fs.open(shard.path, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["path", "identity"])
        return zip(table["path"].to_pylist(), table["identity"].to_pylist(), strict=True)

    def writer(
        self, fs: fsspec.AbstractFileSystem, root: str, *, shard_size: int = 1000
    ) -> DatasetWriter:
        return FolderWriter(fs, root)


def fetch(
    fs: fsspec.AbstractFileSystem, root: str, shard: str, entries: Iterable[tuple[str, str]]
) -> Iterator[dict]:
    """Sample rows for (relative path, identity) entries, fetched in concurrent batches."""
    batch: list[tuple[str, str]] = []

    def flush() -> Iterator[dict]:
        found = fs.cat([posixpath.join(root, p) for p, _ in batch], on_error="return")
        for relative, identity in batch:
            data = found.get(posixpath.join(root, relative))
            if isinstance(data, bytes):
                yield sample(relative, shard, identity, data)
            else:
                yield read_error(relative, shard, identity, f"cannot read object: {data!r}")
        batch.clear()

    for entry in entries:
        batch.append(entry)
        if len(batch) == FETCH_BATCH:
            yield from flush()
    if batch:
        yield from flush()


class FolderWriter(DatasetWriter):
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self.fs, self.root = fs, root
        fs.makedirs(root, exist_ok=True)

    def write(
        self, key: str, identity: str | None, image: bytes, ext: str, meta: dict | None = None
    ) -> str:
        if not identity or "/" in identity:
            raise ValueError(f"a folder dataset needs a plain identity name, got {identity!r}")
        relative = f"{identity}/{posixpath.basename(key)}.{ext}"
        self.fs.makedirs(posixpath.join(self.root, identity), exist_ok=True)
        self.fs.pipe_file(posixpath.join(self.root, relative), image)
        return relative

    def close(self) -> None:
        pass
