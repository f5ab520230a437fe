"""`--to rec-idx`: a new `train.idx` that lists the kept records of an existing `train.rec`.

Nothing of the `.rec` is copied. insightface's MXFaceDataset reads record 0: a header flag
> 0 makes it take image keys 1 .. label[0]-1, flag 0 makes it take every key of the `.idx`.
So the kept image records are renumbered 0 .. K-1 in source key order, each new key pointing
at the original record's byte offset; key 0 is then a flag-0 image and the loader takes
exactly the K kept records. Labels stay the original class indices, so `property` and
`identities.tsv` are the source's. `train.lst` maps each new key to the source image_id and
class; `_export.json` records the `.rec` (format option `rec_file`), and on a local disk
`train.rec` is a symlink to it, so the folder loads as it is.
"""

from __future__ import annotations

import os
import posixpath

import fsspec
import numpy as np

from pipeline.export.base import (
    MISSING,
    ExportError,
    ExportPlan,
    ExportSummary,
    Kept,
    committed,
    problem,
    require_empty,
    summary_for,
    write_lines,
    write_record,
)
from pipeline.formats.rec import (
    IDX,
    NAMES,
    PROPERTY,
    REC,
    RecordError,
    read_index_arrays,
    read_names,
    read_record_at,
    unpack_image_header,
)
from pipeline.storage import filesystem, parse_uri

LST = "train.lst"


def export_rec_idx(kept: Kept, plan: ExportPlan, progress=print) -> ExportSummary:
    if len(kept.datasets) > 1:
        raise ExportError(
            f"{kept.selection.name} keeps images of {', '.join(kept.datasets)}; an index "
            "lists records of one .rec: choose the dataset with --dataset"
        )
    dataset = kept.datasets[0]
    source = kept.selection.source(dataset)
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
    chosen, keys, offsets, summary.problems = _locate(kept, fs, posixpath.join(data.path, IDX))
    if not chosen:
        raise ExportError(f"none of the kept images of {dataset} is in {IDX}: nothing to export")
    _check_first(fs, parse_uri(rec_uri).path, rec_uri, keys[0], offsets[0])
    image_ids = kept.rows["image_id"].to_pylist()
    names_path = posixpath.join(data.path, NAMES)
    names = read_names(fs, names_path) if fs.exists(names_path) else {}
    classes = {name: c for c, name in sorted(names.items(), reverse=True)}  # first class wins
    identities = kept.rows["identity"].to_pylist()
    labels = [_label(identities[i], classes, image_ids[i]) for i in chosen]

    with committed(fs, posixpath.join(root, IDX)) as f:
        write_lines(f, (f"{new}\t{offset}\n" for new, offset in enumerate(offsets)))
    with committed(fs, posixpath.join(root, LST)) as f:
        write_lines(
            f,
            (
                f"{new}\t{image_ids[i]}\t{label}\n"
                for new, (i, label) in enumerate(zip(chosen, labels, strict=True))
            ),
        )
    summary.files = [IDX, LST]
    for name in (PROPERTY, NAMES):
        if fs.exists(posixpath.join(data.path, name)):
            fs.copy(posixpath.join(data.path, name), posixpath.join(root, name))
            summary.files.append(name)
    if out.protocol == "file":  # insightface opens root/train.rec
        os.symlink(parse_uri(rec_uri).path, posixpath.join(root, REC))
        summary.files.append(REC)
    summary.images = len(chosen)
    progress(f"{IDX}: {summary.images} records of {rec_uri}")
    write_record(fs, root, summary)
    return summary


def _locate(
    kept: Kept, fs: fsspec.AbstractFileSystem, idx_path: str
) -> tuple[list[int], list[int], list[int], list[dict]]:
    """The kept rows that `idx_path` lists, in source key order, with their keys and offsets;
    and a problem for each kept row it does not list."""
    image_ids = kept.rows["image_id"].to_pylist()
    keys = np.array([_record_key(i) for i in image_ids], np.int64)
    index_keys, index_offsets = read_index_arrays(fs, idx_path)
    at = np.searchsorted(index_keys, keys)
    listed = np.zeros(len(keys), bool)
    inside = at < len(index_keys)
    listed[inside] = index_keys[at[inside]] == keys[inside]
    datasets, shards = kept.rows["dataset"].to_pylist(), kept.rows["shard"].to_pylist()
    problems = [
        problem(datasets[i], image_ids[i], shards[i], MISSING, f"no record of {IDX} has this key")
        for i in np.flatnonzero(~listed).tolist()
    ]
    chosen = np.flatnonzero(listed)
    chosen = chosen[np.argsort(keys[chosen], kind="stable")]
    return chosen.tolist(), keys[chosen].tolist(), index_offsets[at[chosen]].tolist(), problems


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
