"""`--to rec-idx`: a new `train.idx` that lists the kept records of an existing `train.rec`.

Nothing of the `.rec` is copied. insightface's MXFaceDataset reads record 0: a header flag
> 0 makes it take image keys 1 .. label[0]-1, flag 0 makes it take every key of the `.idx`.
So the kept image records are renumbered 0 .. K-1 in source key order, each new key pointing
at the original record's byte offset; key 0 is then a flag-0 image and the loader takes
exactly the K kept records. Labels stay the original class indices, so `property` and
`identities.tsv` are the source's. `train.lst` maps each new key to the source image_id and
class; `_export.json` records the `.rec` (format option `rec_file`), and on a local disk
`train.rec` is a symlink to it, so the folder loads as it is.

At scale: the driver reads the source `.idx` once in blocks, noting each block's smallest and
largest key. Each group of kept keys (`kept.py`) reads only the blocks whose key range meets
its own (a sorted index, as mxnet writes them, gives one or two blocks a group) and writes its
records, numbered from 0, as a piece; the driver then writes `.idx` and `.lst` from the pieces
in order, adding each piece's first new key.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.export.base import (
    MISSING,
    ExportError,
    ExportPlan,
    ExportSummary,
    problem,
    require_empty,
    summary_for,
    write_record,
)
from pipeline.export.kept import Group, Kept, for_each_group, plan_groups
from pipeline.formats.rec import (
    IDX,
    NAMES,
    PROPERTY,
    REC,
    index_blocks,
    parse_index_lines,
    read_names,
)
from pipeline.formats.recordio import RecordError, read_record_at, unpack_image_header
from pipeline.shuffle import Part
from pipeline.storage import StorageOptions, arrow_filesystem, committed, filesystem, parse_uri

LST = "train.lst"
PIECE = pa.schema(
    [("key", pa.int64()), ("offset", pa.int64()), ("image_id", pa.string()), ("label", pa.int64())]
)


@dataclass(frozen=True)
class Block:
    """Lines of the source `.idx`: bytes start .. start + size, keys lowest .. highest."""

    start: int
    size: int
    lowest: int
    highest: int


def _parse(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return parse_index_lines(data, where)
    except ValueError as e:
        raise ExportError(str(e)) from None


def key_ranges(fs: fsspec.AbstractFileSystem, path: str) -> list[Block]:
    """The `.idx` cut into blocks of whole lines, each with its key range (one pass)."""
    with fs.open(path, "rb") as f:
        blocks = []
        for start, lines in index_blocks(f):
            keys, _ = _parse(lines, path)
            blocks.append(Block(start, len(lines), int(keys.min()), int(keys.max())))
        return blocks


def _index_entries(
    uri: str, blocks: list[Block], lowest: int, highest: int, storage: StorageOptions | None
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) sorted by key of the index lines with keys in [lowest, highest]; a key
    listed twice keeps its last offset, as mxnet's reader does."""
    fs, path = arrow_filesystem(uri, storage)
    keys, offsets = [], []
    with fs.open_input_file(path) as f:
        for block in blocks:
            if block.highest < lowest or block.lowest > highest:
                continue
            k, o = _parse(f.read_at(block.size, block.start), uri)
            inside = (k >= lowest) & (k <= highest)
            keys.append(k[inside])
            offsets.append(o[inside])
    k = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    o = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
    last = len(k) - 1 - np.unique(k[::-1], return_index=True)[1]  # sorted keys, last listing
    return k[last], o[last]


def _piece(
    group: Group,
    rows: pa.Table,
    idx_uri: str,
    blocks: list[Block],
    classes: dict[str, int],
    folder: str,
    storage: StorageOptions | None,
) -> tuple[int, Part | None, int, list[dict]]:
    """The group's records listed by the source index, by key, as a piece in scratch; and a
    problem for each kept row the index does not list."""
    image_ids = rows["image_id"].to_pylist()
    keys = np.array([_record_key(i) for i in image_ids], np.int64)
    valid = keys >= 0
    index_keys, index_offsets = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if valid.any():
        lowest, highest = int(keys[valid].min()), int(keys[valid].max())
        index_keys, index_offsets = _index_entries(idx_uri, blocks, lowest, highest, storage)
    at = np.searchsorted(index_keys, keys)
    listed = np.zeros(len(keys), bool)
    inside = at < len(index_keys)
    listed[inside] = index_keys[at[inside]] == keys[inside]
    datasets, shards = rows["dataset"].to_pylist(), rows["shard"].to_pylist()
    problems = [
        problem(datasets[i], image_ids[i], shards[i], MISSING, f"no record of {IDX} has this key")
        for i in np.flatnonzero(~listed).tolist()
    ]
    chosen = np.flatnonzero(listed)
    chosen = chosen[np.argsort(keys[chosen], kind="stable")]
    if not len(chosen):
        return group.number, None, 0, problems
    identities = rows["identity"].to_pylist()
    piece = pa.table(
        {
            "key": keys[chosen],
            "offset": index_offsets[at[chosen]],
            "image_id": [image_ids[i] for i in chosen.tolist()],
            "label": [_label(identities[i], classes, image_ids[i]) for i in chosen.tolist()],
        },
        schema=PIECE,
    )
    uri = posixpath.join(folder, f"rec-{group.number:06d}.parquet")
    fs, path = arrow_filesystem(uri, storage)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        pq.write_table(piece, out)
    return group.number, Part(uri), len(chosen), problems


def export_rec_idx(kept: Kept, plan: ExportPlan, folder: str, progress=print) -> ExportSummary:
    if len(kept.datasets) > 1:
        raise ExportError(
            f"{kept.name} keeps images of {', '.join(kept.datasets)}; an index "
            "lists records of one .rec: choose the dataset with --dataset"
        )
    dataset = kept.datasets[0]
    source = kept.source(dataset)
    if source["format"] != "rec":
        raise ExportError(
            f"rec-idx indexes a rec dataset, and {dataset} is {source['format']} "
            f"({source['data']}); export it with --to wds"
        )
    data, out = parse_uri(source["data"]), parse_uri(plan.out)
    if data.protocol != out.protocol:
        raise ExportError(
            f"--out {plan.out} must be on the storage of {source['data']}: the new index "
            "points into its .rec"
        )
    rec_uri = source["format_options"].get("rec_file") or data.join(REC).uri
    fs, root = filesystem(plan.out, plan.storage)
    require_empty(fs, root, plan.out)
    summary = summary_for(kept, plan)
    summary.format_options = {"rec_file": rec_uri}

    # The source's files are read through the export's filesystem: same storage, checked above.
    idx_path = posixpath.join(data.path, IDX)
    progress(f"reading the key ranges of {data.join(IDX).uri}")
    blocks = key_ranges(fs, idx_path)
    names_path = posixpath.join(data.path, NAMES)
    names = read_names(fs, names_path) if fs.exists(names_path) else {}
    classes = {name: c for c, name in sorted(names.items(), reverse=True)}  # first class wins
    pieces: list[tuple[int, Part | None, int, list[dict]]] = []
    work = (data.join(IDX).uri, blocks, classes, folder, plan.storage)
    groups = plan_groups(kept.shards)
    for_each_group(kept, groups, _piece, work, pieces.append, folder, plan.storage, progress)
    pieces.sort(key=lambda p: p[0])
    summary.problems = [p for *_, problems in pieces for p in problems]
    summary.images = sum(count for _, _, count, _ in pieces)
    if not summary.images:
        raise ExportError(f"none of the kept images of {dataset} is in {IDX}: nothing to export")
    first = next(part for _, part, _, _ in pieces if part is not None)
    with _open(first, plan.storage) as f:
        head = pq.ParquetFile(f).read_row_group(0, columns=["key", "offset"]).slice(0, 1)
    _check_first(
        fs, parse_uri(rec_uri).path, rec_uri, head["key"][0].as_py(), head["offset"][0].as_py()
    )
    summary.files = [IDX, LST]
    if plan.dry_run:
        return summary
    parts = [part for _, part, _, _ in pieces if part is not None]
    with committed(fs, posixpath.join(root, IDX)) as f:
        for block in _lines(parts, ("offset",), plan.storage):
            f.write(block)
    with committed(fs, posixpath.join(root, LST)) as f:
        for block in _lines(parts, ("image_id", "label"), plan.storage):
            f.write(block)
    for name in (PROPERTY, NAMES):
        if fs.exists(posixpath.join(data.path, name)):
            fs.copy(posixpath.join(data.path, name), posixpath.join(root, name))
            summary.files.append(name)
    if out.protocol == "file":  # insightface opens root/train.rec
        os.symlink(parse_uri(rec_uri).path, posixpath.join(root, REC))
        summary.files.append(REC)
    progress(f"{IDX}: {summary.images} records of {rec_uri}")
    write_record(fs, root, summary)
    return summary


def _open(part: Part, storage: StorageOptions | None):
    fs, path = arrow_filesystem(part.path, storage)
    return fs.open_input_file(path)


def _lines(
    parts: list[Part], columns: tuple[str, ...], storage: StorageOptions | None
) -> Iterator[bytes]:
    """Blocks of `new key<TAB>column...` lines of the pieces in order, new keys from 0."""
    new = 0
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    for part in parts:
        with _open(part, storage) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=list(columns)):
                keys = pa.array(np.arange(new, new + len(batch), dtype=np.int64))
                lines = pa.Table.from_arrays([keys, *batch.columns], ["key", *columns])
                block = io.BytesIO()
                pacsv.write_csv(lines, block, options)
                yield block.getvalue()
                new += len(batch)


def _record_key(image_id: str) -> int:
    """The record key of `train.rec#<key>`; -1 for anything else (reported as missing)."""
    name, _, key = image_id.rpartition("#")
    return int(key) if name == REC and key.isdecimal() else -1


def _check_first(
    fs: fsspec.AbstractFileSystem, rec_path: str, rec_uri: str, key: int, offset: int
) -> None:
    """Refuses a first record that insightface's loader would take for the dataset header."""
    with fs.open(rec_path, "rb") as f:
        try:
            header, _ = unpack_image_header(read_record_at(f, offset)[0])
        except RecordError as e:
            raise ExportError(
                f"{rec_uri}: record {key}, the first kept, is unreadable: {e}"
            ) from None
    if isinstance(header.label, tuple):
        raise ExportError(
            f"{rec_uri}: record {key}, the first kept, has header flag {len(header.label)} > 0; "
            "as record 0 of the new index, insightface's loader would take it for the "
            "dataset header. Drop it from the selection, or export with --to wds"
        )


def _label(identity: str | None, classes: dict[str, int], image_id: str) -> int:
    """The class index behind an identity: its name's class, or the index itself."""
    if identity in classes:
        return classes[identity]
    if identity is not None and identity.isdecimal():
        return int(identity)
    raise ExportError(
        f"{image_id}: identity {identity!r} is neither a class index nor a name in {NAMES}"
    )
