"""WebDataset tar shards: `<key>.<image ext>` plus `<key>.json` (at least `identity`).

Members are grouped by key the way the `webdataset` package does it: the key is the member
path up to the first dot of its file name. `.cls` (a class label as text) is accepted instead
of the JSON identity. image_id is `<shard>/<key>`, unique even when keys repeat across shards.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator

import fsspec

from pipeline.formats.base import (
    DatasetFormat,
    DatasetWriter,
    Shard,
    ShardError,
    read_error,
    sample,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")
SHARD_PATTERN = "shard-{:06d}.tar"


def split_member(name: str) -> tuple[str, str]:
    """("dir/key", "ext.with.dots") of a member name."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


class WdsFormat(DatasetFormat):
    name = "wds"

    def list_shards(self, fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
        paths = sorted(p for p in fs.find(root) if p.endswith(".tar"))
        return [Shard(key=posixpath.relpath(p, root), path=p) for p in paths]

    def read_shard(self, fs: fsspec.AbstractFileSystem, root: str, shard: Shard) -> Iterator[dict]:
        group_key, group = None, {}
        try:
            with fs.open(shard.path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_member(member.name)
                    if key != group_key and group:
                        yield self._row(shard.key, group_key, group)
                        group = {}
                    group_key = key
                    group[ext] = tar.extractfile(member).read()
                end = tar.offset
            # tarfile stops quietly when a cut falls between members; a complete archive
            # still has its end-of-archive marker (two zero blocks) after the last member.
            if fs.size(shard.path) < end + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker, the tar was cut short")
        except (tarfile.TarError, EOFError, OSError) as e:
            # The sample being read when the stream broke may be incomplete: record it, then
            # the shard (whatever followed in the tar is unknowable).
            if group:
                yield read_error(
                    f"{shard.key}/{group_key}", shard.key, None, f"truncated tar member: {e}"
                )
            raise ShardError(shard.key, f"unreadable tar after the rows above: {e}") from e
        if group:
            yield self._row(shard.key, group_key, group)

    @staticmethod
    def _row(shard: str, key: str, group: dict[str, bytes]) -> dict:
        image_id = f"{shard}/{key}"
        images = [ext for ext in group if ext in IMAGE_EXTENSIONS]
        identity, problem = None, None
        if "json" in group:
            try:
                meta = json.loads(group["json"])
                identity = meta.get("identity") if isinstance(meta, dict) else None
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                problem = f"invalid {key}.json: {e}"
        if identity is None and "cls" in group:
            identity = group["cls"].decode(errors="replace").strip()
        if problem:
            return read_error(image_id, shard, None, problem)
        if len(images) != 1:
            found = ", ".join(sorted(group)) or "nothing"
            return read_error(
                image_id,
                shard,
                None if identity is None else str(identity),
                f"expected one image member for key {key}, found {found}",
            )
        return sample(
            image_id, shard, None if identity is None else str(identity), group[images[0]]
        )

    def writer(
        self, fs: fsspec.AbstractFileSystem, root: str, *, shard_size: int = 1000
    ) -> DatasetWriter:
        return WdsWriter(fs, root, shard_size)


class WdsWriter(DatasetWriter):
    """Streams samples into tar shards of `shard_size` samples each."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, shard_size: int):
        self.fs, self.root, self.shard_size = fs, root, shard_size
        self.count, self.file, self.tar, self.shard = 0, None, None, ""
        fs.makedirs(root, exist_ok=True)

    def _next_shard(self) -> None:
        self._close_shard()
        self.shard = SHARD_PATTERN.format(self.count // self.shard_size)
        # Both stay open across write() calls; _close_shard() closes them.
        self.file = self.fs.open(posixpath.join(self.root, self.shard), "wb")
        self.tar = tarfile.open(  # noqa: SIM115
            fileobj=self.file, mode="w|", format=tarfile.USTAR_FORMAT
        )

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: reproducible bytes
        self.tar.addfile(info, fileobj=io.BytesIO(data))

    def write(
        self, key: str, identity: str | None, image: bytes, ext: str, meta: dict | None = None
    ) -> str:
        if "." in posixpath.basename(key):
            raise ValueError(f"a WebDataset key cannot contain a dot: {key!r}")
        if self.count % self.shard_size == 0:
            self._next_shard()
        self._add(f"{key}.{ext}", image)
        self._add(
            f"{key}.json",
            json.dumps({**(meta or {}), "identity": identity}, sort_keys=True).encode(),
        )
        self.count += 1
        return f"{self.shard}/{key}"

    def _close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.file.close()
            self.tar = self.file = None

    def close(self) -> None:
        self._close_shard()
