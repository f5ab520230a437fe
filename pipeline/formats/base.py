"""What every dataset format provides: shard listing, a streaming shard reader and a writer.

A reader yields sample rows (`SAMPLE_SCHEMA`) and never raises for bad content: what is
readable comes through with status `ok`, what is not becomes a row with status `read_error`
and a message, or, when not even the keys can be recovered, a `ShardError` naming the shard
(the caller records it; the job goes on with the other shards).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import fsspec
import pyarrow as pa

from pipeline.status import OK, READ_ERROR

SAMPLE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("identity", pa.string()),
        ("image", pa.binary()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


class ShardError(RuntimeError):
    """A shard that could not be read at all (or not past some point); says which and why."""

    def __init__(self, shard: str, reason: str):
        super().__init__(f"{shard}: {reason}")
        self.shard, self.reason = shard, reason


@dataclass(frozen=True)
class Shard:
    """One unit of work. `key` is stable and unique within the dataset (it is the manifest's
    `shard`); `path` is the object the reader opens; `start`/`stop` select a record range
    (RecordIO) and are unused by whole-file formats."""

    key: str
    path: str
    start: int = 0
    stop: int | None = None


def sample(
    image_id: str,
    shard: str,
    identity: str | None,
    image: bytes | None,
    status: str = OK,
    error: str | None = None,
) -> dict:
    return {
        "image_id": image_id,
        "shard": shard,
        "identity": identity,
        "image": image,
        "status": status,
        "error": error,
    }


def read_error(image_id: str, shard: str, identity: str | None, message: str) -> dict:
    return sample(image_id, shard, identity, None, READ_ERROR, message)


class DatasetWriter(ABC):
    """Writes samples in order; `close()` finishes the last shard and any index files."""

    @abstractmethod
    def write(
        self, key: str, identity: str | None, image: bytes, ext: str, meta: dict | None = None
    ) -> str:
        """Store one image (`ext` like "jpg"); returns the image_id a reader will report."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DatasetFormat(ABC):
    name: ClassVar[str]

    @abstractmethod
    def list_shards(self, fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
        """Shards of the dataset at `root`, in a stable order. Lists files, never images."""

    @abstractmethod
    def read_shard(self, fs: fsspec.AbstractFileSystem, root: str, shard: Shard) -> Iterator[dict]:
        """Sample rows of one shard, streamed."""

    @abstractmethod
    def writer(
        self, fs: fsspec.AbstractFileSystem, root: str, *, shard_size: int = 1000
    ) -> DatasetWriter:
        """A writer that creates a dataset at `root`, `shard_size` images per shard."""

    def read_images(
        self, fs: fsspec.AbstractFileSystem, root: str, wanted: Mapping[str, Collection[str]]
    ) -> Iterator[dict]:
        """Rows of a few images, `wanted` as shard key -> image_ids: the shards holding them
        are read until their images have come by. A shard that breaks or has gone yields
        what it did before."""
        for shard in self.list_shards(fs, root):
            if wanted.get(shard.key):
                try:
                    yield from wanted_of(self.read_shard(fs, root, shard), wanted[shard.key])
                except (ShardError, OSError):
                    continue


def wanted_of(
    rows: Iterable[dict], image_ids: Collection[str], shard_key: str | None = None
) -> Iterator[dict]:
    """The rows whose image_id is in `image_ids`, and the failure row of shard `shard_key`,
    until all of them have come by: reading stops there."""
    missing = set(image_ids)
    for row in rows:
        broke = row["image_id"] == shard_key and row["status"] != OK
        if row["image_id"] in missing or broke:
            missing.discard(row["image_id"])
            yield row
            if not missing:
                return
