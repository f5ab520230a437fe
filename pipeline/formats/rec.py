"""insightface RecordIO datasets (`rec`): `train.rec` + `train.idx` + `property`, without mxnet.

`train.rec` holds dmlc RecordIO records of mxnet image records (the codec: `recordio`).
`train.idx` is text, `key<TAB>offset` per record, where offset is the byte position of the
record's (first) magic.

insightface's layout: record 0 is a header with labels [first identity key, end]; image records
are keys 1 .. first-1, labelled with their class index; identity records are keys first ..
end-1, record `first + c` holding labels [start, stop) of class c's image keys. `property` is
one line `num_classes,112,112`. When the identities had names, `identities.tsv` (class index
TAB name) keeps them.

A sample's image_id is `train.rec#<key>`; its identity is the name from identities.tsv, or the
class index as a string. Shards are ranges of image keys read by random access through the
index; a `.rec` without `.idx` is one shard, scanned sequentially. The `rec_file` option reads
the records from another `.rec` than `<root>/train.rec`: an index written by `fiqa export
--to rec-idx` lists a subset of an existing file's records.
"""

from __future__ import annotations

import functools
import io
import posixpath
import shutil
import tempfile
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import BinaryIO

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.formats.base import (
    DatasetFormat,
    DatasetWriter,
    Shard,
    ShardError,
    read_error,
    sample,
)
from pipeline.formats.recordio import (
    MAX_LABEL,
    ImageHeader,
    RecordError,
    dataset_header,
    iter_records,
    pack_image_header,
    pack_record,
    read_record_at,
    stream_size,
    unpack_image_header,
)
from pipeline.storage import parse_uri, write_lines

REC, IDX, PROPERTY, NAMES = "train.rec", "train.idx", "property", "identities.tsv"
INDEX_BLOCK_BYTES = 16 << 20  # of a `.idx` read in blocks
IMAGE_SIZE = (112, 112)  # what `property` announces: insightface's aligned crop size
_COPY_CHUNK = 8 << 20


# --- index and names --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    keys: np.ndarray  # sorted, unique
    offsets: np.ndarray  # offsets[i]: where record keys[i] starts
    starts: np.ndarray  # every offset, sorted and unique: where a record must end at the latest

    def between(self, start: int, stop: int) -> dict[int, int]:
        """{key: offset} of the keys in [start, stop)."""
        lo, hi = np.searchsorted(self.keys, [start, stop])
        return dict(zip(self.keys[lo:hi].tolist(), self.offsets[lo:hi].tolist(), strict=True))

    def limit(self, offset: int, size: int) -> int:
        """Where the record at `offset` must end: the next indexed record, or the file's end.
        This catches a garbage length that stays inside the file."""
        following = self.starts[np.searchsorted(self.starts, offset, side="right") :]
        return min(int(following[0]), size) if len(following) else size


def read_index(fs: fsspec.AbstractFileSystem, path: str) -> dict[int, int]:
    """{key: offset} of a `.idx` file; a key listed twice keeps its last offset, as mxnet's."""
    index = _parse_index(fs, path)
    return dict(zip(index.keys.tolist(), index.offsets.tolist(), strict=True))


def _parse_index(fs: fsspec.AbstractFileSystem, path: str) -> _Index:
    # Compact arrays: a Glint360K index has 17M lines, far too many for a dict per worker.
    keys, offsets = array("q"), array("q")
    with fs.open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                key, offset = (int(field) for field in fields)
                keys.append(key)
                offsets.append(offset)
            except (ValueError, OverflowError):
                raise ValueError(f"{path}:{number}: not 'key<TAB>offset': {line[:80]!r}") from None
    k, o = np.frombuffer(keys, np.int64), np.frombuffer(offsets, np.int64)
    order = np.argsort(k, kind="stable")
    k, o = k[order], o[order]
    last = np.ones(len(k), bool)
    last[:-1] = k[1:] != k[:-1]
    return _Index(k[last], o[last], np.unique(o))


def index_blocks(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(byte offset, lines) of a `.idx` read in blocks of whole lines, about INDEX_BLOCK_BYTES
    each: for readers that must not hold a whole index (a billion-row curation's)."""
    start, carry = 0, b""
    while True:
        chunk = f.read(INDEX_BLOCK_BYTES)
        data = carry + chunk
        cut = len(data) if not chunk else data.rfind(b"\n") + 1
        block, carry = data[:cut], data[cut:]
        if block.strip():
            yield start, block
        start += len(block)
        if not chunk:
            return


def parse_index_lines(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of `.idx` lines in file order; ValueError if they are not
    `key<TAB>offset`."""
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=["key", "offset"]),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.int64(), "offset": pa.int64()}
            ),
        )
    except pa.ArrowInvalid as e:
        raise ValueError(f"{where}: not 'key<TAB>offset' lines: {e}") from None
    return table["key"].to_numpy(), table["offset"].to_numpy()


def find_records(
    fs: fsspec.AbstractFileSystem, path: str, keys: Iterable[int]
) -> dict[int, tuple[int, int | None]]:
    """{key: (offset, where the next indexed record starts, None after the last)} of the
    `keys` that the `.idx` at `path` lists, a key listed twice at its last offset. Two passes
    in blocks, never the whole index: a report's thumbnails are a few keys of millions."""
    wanted = np.unique(np.fromiter(keys, np.int64))
    found: dict[int, int] = {}
    with fs.open(path, "rb") as f:
        for _, block in index_blocks(f):
            k, o = parse_index_lines(block, path)
            hit = np.isin(k, wanted)
            found.update(zip(k[hit].tolist(), o[hit].tolist(), strict=True))
    offsets = np.array(sorted(set(found.values())), np.int64)
    following = np.full(len(offsets), np.iinfo(np.int64).max)
    with fs.open(path, "rb") as f:
        for _, block in index_blocks(f):
            _, o = parse_index_lines(block, path)
            o = np.unique(o)
            at = np.searchsorted(o, offsets, side="right")
            inside = at < len(o)
            following[inside] = np.minimum(following[inside], o[at[inside]])
    ends = {
        int(offset): None if end == np.iinfo(np.int64).max else int(end)
        for offset, end in zip(offsets, following, strict=True)
    }
    return {key: (offset, ends[offset]) for key, offset in found.items()}


def read_names(fs: fsspec.AbstractFileSystem, path: str) -> dict[int, str]:
    """{class index: name} of an `identities.tsv` file."""
    names = {}
    with fs.open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            index, tab, name = line.rstrip(b"\r\n").decode("utf-8", "replace").partition("\t")
            if not tab or not index.isdecimal():
                raise ValueError(f"{path}:{number}: not 'class<TAB>name': {line[:80]!r}")
            names[int(index)] = name
    return names


# Every shard of a dataset needs the same index and names: parse them once per process. The
# stamp (size, modification time or ETag) is part of the key, so a rewritten file is re-read.
@functools.lru_cache(maxsize=4)
def _cached_index(fs: fsspec.AbstractFileSystem, path: str, stamp: tuple) -> _Index:
    return _parse_index(fs, path)


@functools.lru_cache(maxsize=4)
def _cached_names(fs: fsspec.AbstractFileSystem, path: str, stamp: tuple) -> dict[int, str]:
    return read_names(fs, path)


def _stamp(fs: fsspec.AbstractFileSystem, path: str) -> tuple | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return tuple(info.get(k) for k in ("size", "mtime", "created", "LastModified", "ETag"))


def _index(fs: fsspec.AbstractFileSystem, path: str) -> _Index | None:
    stamp = _stamp(fs, path)
    return None if stamp is None else _cached_index(fs, path, stamp)


def _names(fs: fsspec.AbstractFileSystem, path: str) -> dict[int, str]:
    stamp = _stamp(fs, path)
    return {} if stamp is None else _cached_names(fs, path, stamp)


def _image_range(f: BinaryIO, size: int, index: _Index) -> range | None:
    """Image keys per insightface's header record 0; None without one (all keys are images)."""
    entry = index.between(0, 1)
    if not entry:
        return None
    payload, _ = read_record_at(f, entry[0], index.limit(entry[0], size))
    header = dataset_header(payload)
    if header is None:
        return None
    return range(1, min(header[0], int(index.keys[-1]) + 1))


# --- the format -------------------------------------------------------------------------------


def _image_id(key: int) -> str:
    return f"{REC}#{key}"


def _identity(label: float | tuple[float, ...], names: dict[int, str]) -> str | None:
    value = label[0] if isinstance(label, tuple) else label
    if not value.is_integer():  # also NaN and infinities: no class index to report
        return None
    return names.get(int(value), str(int(value)))


def _image_row(key: int, payload: bytes, shard: str, names: dict[int, str]) -> dict:
    try:
        header, image = unpack_image_header(payload)
    except RecordError as e:
        return read_error(_image_id(key), shard, None, str(e))
    identity = _identity(header.label, names)
    if not image:
        return read_error(_image_id(key), shard, identity, "record holds no image bytes")
    return sample(_image_id(key), shard, identity, image)


class RecFormat(DatasetFormat):
    """insightface RecordIO; shards are ranges of at most `records_per_shard` image records."""

    name = "rec"

    def __init__(self, records_per_shard: int = 1000, rec_file: str | None = None):
        """`rec_file`: URI of the `.rec` to read (default `<root>/train.rec`), on the same
        storage as the dataset."""
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be at least 1, not {records_per_shard}")
        self.records_per_shard = records_per_shard
        self.rec_file = parse_uri(rec_file).path if rec_file else None

    def list_shards(self, fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
        """Image key ranges from `train.idx` and header record 0; without an index, one shard
        for the whole `.rec`. A header record that cannot be read raises ShardError: without
        it, image records cannot be told from identity records."""
        rec = self.rec_file or posixpath.join(root, REC)
        index = _index(fs, posixpath.join(root, IDX))
        if index is None:
            if not fs.exists(rec):
                raise FileNotFoundError(f"{rec}: no such file")
            return [Shard(REC, rec)]
        with fs.open(rec, "rb") as f:
            try:
                images = _image_range(f, stream_size(f), index)
            except RecordError as e:
                raise ShardError(_image_id(0), f"header record unreadable: {e}") from e
        keys = index.keys if images is None else np.arange(images.start, images.stop)
        step = self.records_per_shard
        bounds = [
            (int(keys[i]), int(keys[min(i + step, len(keys)) - 1]) + 1)
            for i in range(0, len(keys), step)
        ]
        return [Shard(f"{REC}#{start}-{stop}", rec, start, stop) for start, stop in bounds]

    def read_shard(self, fs: fsspec.AbstractFileSystem, root: str, shard: Shard) -> Iterator[dict]:
        """Rows of one shard. A bad record is a `read_error` row. With an index, reading goes
        on with the next key; without one (a whole-file shard), the first bad record's row
        ends the shard, since nothing after it can be located (its message says so)."""
        try:
            names = _names(fs, posixpath.join(root, NAMES))
            index = None if shard.stop is None else _index(fs, posixpath.join(root, IDX))
        except ValueError as e:
            raise ShardError(shard.key, str(e)) from e
        if shard.stop is not None and index is None:
            raise ShardError(shard.key, f"{IDX} is missing: cannot locate an index range")
        with fs.open(shard.path, "rb") as f:
            size = stream_size(f)
            if index is None:
                yield from _scan(f, size, shard.key, names)
            else:
                yield from _read_range(f, size, shard, index, names)

    def read_images(
        self, fs: fsspec.AbstractFileSystem, root: str, wanted: Mapping[str, Collection[str]]
    ) -> Iterator[dict]:
        """With an index, the wanted records are looked up in it block by block and read where
        it puts them: no shard is listed, so the index is never held whole."""
        idx = posixpath.join(root, IDX)
        if not fs.exists(idx):
            yield from super().read_images(fs, root, wanted)
            return
        shards = {}  # key -> shard key
        for shard_key, image_ids in wanted.items():
            for image_id in image_ids:
                name, _, key = image_id.partition("#")
                if name == REC and key.isdecimal():
                    shards[int(key)] = shard_key
        located = find_records(fs, idx, shards)
        names = _names(fs, posixpath.join(root, NAMES))
        with fs.open(self.rec_file or posixpath.join(root, REC), "rb") as f:
            size = stream_size(f)
            for key, (offset, end) in sorted(located.items()):
                if 0 <= offset < size:
                    limit = size if end is None else min(end, size)
                    yield _read_indexed(f, key, offset, limit, size, shards[key], names)

    def writer(
        self, fs: fsspec.AbstractFileSystem, root: str, *, shard_size: int = 1000
    ) -> DatasetWriter:
        """A writer of one `train.rec`; `shard_size` is unused (shards are key ranges that
        `list_shards` cuts at read time, with `records_per_shard`)."""
        return RecWriter(fs, root)


def _scan(f: BinaryIO, size: int, shard: str, names: dict[int, str]) -> Iterator[dict]:
    """Rows of a `.rec` read front to back; keys are record ordinals, which are the index keys
    of files written sequentially (insightface's are). Stops before the identity records."""
    done, end = 0, None
    try:
        for _, payload in iter_records(f, 0, size):
            if done == 0 and (header := dataset_header(payload)) is not None:
                end = header[0]
            else:
                yield _image_row(done, payload, shard, names)
            done += 1
            if done == end:
                return
    except RecordError as e:
        yield read_error(
            _image_id(done),
            shard,
            None,
            f"{e}; sequential scan stopped, the rest of {REC} is unread",
        )


def _read_range(
    f: BinaryIO, size: int, shard: Shard, index: _Index, names: dict[int, str]
) -> Iterator[dict]:
    try:
        images = _image_range(f, size, index)
    except RecordError as e:
        raise ShardError(shard.key, f"header record unreadable: {e}") from e
    entries = index.between(shard.start, shard.stop)
    # With a header, every key of the range is an image record, so a missing entry is news.
    keys = entries if images is None else range(shard.start, shard.stop)
    for key in keys:
        offset = entries.get(key)
        if offset is None:
            yield read_error(_image_id(key), shard.key, None, f"no {IDX} entry for record {key}")
        elif not 0 <= offset < size:
            yield read_error(
                _image_id(key),
                shard.key,
                None,
                f"{IDX} offset {offset} is outside {REC} ({size} bytes)",
            )
        else:
            yield _read_indexed(f, key, offset, index.limit(offset, size), size, shard.key, names)


def _read_indexed(
    f: BinaryIO, key: int, offset: int, limit: int, size: int, shard: str, names: dict[int, str]
) -> dict:
    try:
        payload, _ = read_record_at(f, offset, limit)
    except RecordError as e:
        where = "" if limit == size else " (where the next indexed record starts)"
        return read_error(_image_id(key), shard, None, f"{e}{where}")
    return _image_row(key, payload, shard, names)


class RecWriter(DatasetWriter):
    """Writes an insightface dataset: `train.rec`, `train.idx`, `property`, `identities.tsv`.

    Record 0 must come first but holds counts known only at the end, and object stores (s3)
    cannot patch a file in place. So image records stream to a local temporary file (it needs
    disk for the whole .rec) while memory holds 8 bytes per image and the class ranges; close()
    then writes train.rec in one sequential pass: header, images, identity records.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self._fs, self._root = fs, root
        self._images = tempfile.TemporaryFile()  # noqa: SIM115 - lives until close()
        self._offsets = array("q")  # where image record k+1 starts in the temporary file
        self._firsts = array("q")  # first image key of each class
        self._names: list[str] = []  # class index -> identity
        self._seen: set[str] = set()
        self._closed = False
        fs.makedirs(root, exist_ok=True)

    def write(
        self, key: str, identity: str | None, image: bytes, ext: str, meta: dict | None = None
    ) -> str:
        """Appends one image record. `key`, `ext` and `meta` have no place in the format."""
        if self._closed:
            raise ValueError("write() after close()")
        new = not self._names or identity != self._names[-1]
        if new:
            self._check_identity(key, identity)
        record = len(self._offsets) + 1
        if record + 1 + len(self._names) + new > MAX_LABEL:
            raise ValueError(f"{key}: a .rec holds keys up to {MAX_LABEL} (float32 labels)")
        if new:
            self._names.append(identity)
            self._seen.add(identity)
            self._firsts.append(record)
        self._offsets.append(self._images.tell())
        label = float(len(self._names) - 1)
        self._images.write(pack_record(pack_image_header(ImageHeader(label, record)) + image))
        return _image_id(record)

    def _check_identity(self, key: str, identity: str | None) -> None:
        if identity is None:
            raise ValueError(f"{key}: a .rec labels every image with a class; identity needed")
        if identity in self._seen:
            raise ValueError(
                f"{key}: identity {identity!r} reappears after others started; "
                "a .rec needs each identity's images contiguous"
            )
        if any(c in identity for c in "\t\r\n"):
            raise ValueError(f"{key}: identity {identity!r} has a tab or line break")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._publish()
        finally:
            self._images.close()

    def _publish(self) -> None:
        fs, images, classes = self._fs, len(self._offsets), len(self._names)
        first = images + 1
        header = pack_record(pack_image_header(ImageHeader((float(first), float(first + classes)))))
        pos = len(header) + self._images.tell()
        identity_offsets = array("q")
        with fs.open(posixpath.join(self._root, REC), "wb") as out:
            out.write(header)
            self._images.seek(0)
            shutil.copyfileobj(self._images, out, _COPY_CHUNK)
            for c, (start, stop) in enumerate(self._class_ranges()):
                record = pack_record(
                    pack_image_header(ImageHeader((float(start), float(stop)), first + c))
                )
                identity_offsets.append(pos)
                out.write(record)
                pos += len(record)
        with fs.open(posixpath.join(self._root, IDX), "wb") as out:
            write_lines(out, _index_lines(len(header), self._offsets, first, identity_offsets))
        with fs.open(posixpath.join(self._root, PROPERTY), "wb") as out:
            out.write(f"{classes},{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}\n".encode())
        self._write_names()

    def _class_ranges(self) -> Iterator[tuple[int, int]]:
        return pairwise([*self._firsts, len(self._offsets) + 1])

    def _write_names(self) -> None:
        path = posixpath.join(self._root, NAMES)
        if all(name == str(c) for c, name in enumerate(self._names)):
            if self._fs.exists(path):  # a stale one would rename this dataset's classes
                self._fs.rm(path)
            return
        with self._fs.open(path, "wb") as out:
            write_lines(out, (f"{c}\t{name}\n" for c, name in enumerate(self._names)))


def _index_lines(
    header_size: int,
    image_offsets: Iterable[int],
    first_identity: int,
    identity_offsets: Iterable[int],
) -> Iterator[str]:
    yield "0\t0\n"
    for key, offset in enumerate(image_offsets, 1):
        yield f"{key}\t{header_size + offset}\n"
    for key, offset in enumerate(identity_offsets, first_identity):
        yield f"{key}\t{offset}\n"
