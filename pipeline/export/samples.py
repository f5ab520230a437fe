"""The kept samples, streamed from their source shards by the tasks that write the output.

The driver plans from the selection alone: the K kept rows in export order are numbered
0 .. K-1 (a row's position, which is also its sample key) and cut into output shards of
`balanced_sizes(K, shard_size)` consecutive positions. The rows of one source shard are
adjacent in export order, so each output is a run of slices: one source shard and the
image_ids wanted from it. A source shard on an output's boundary is read by both outputs'
tasks, each taking its own slice: reading it twice is the price of never gathering samples
anywhere but in the task that writes them.

One Ray task per output streams its slices through the format's reader (`wanted_rows`),
stops a shard once all its wanted ids have come by, and hands the samples to its writer in
export order. Only a sample the reader gives ahead of its turn waits, so a task holds at
most one slice's wanted rows beyond what its writer buffers. A kept image that cannot be
delivered (missing, unreadable, unsupported) is a problem; it leaves a gap in the positions
and makes its output one smaller, so output sizes stay balanced to within the failures.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import ray
from ray.remote_function import RemoteFunction

from pipeline.datasource import wanted_rows
from pipeline.export.base import (
    MISSING,
    PARTIAL,
    UNREADABLE,
    UNSUPPORTED,
    ExportError,
    ExportPlan,
    ExportSummary,
    Kept,
    every,
    problem,
    require_empty,
    summary_for,
    write_record,
)
from pipeline.formats import get_format
from pipeline.formats.base import OK, Shard, ShardError
from pipeline.storage import StorageOptions, filesystem

# Leading bytes of the image formats a WebDataset shard names by extension.
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"P6", "ppm"),
)


def image_extension(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _SIGNATURES if data.startswith(magic)), None)


def balanced_sizes(total: int, shard_size: int) -> list[int]:
    """Sizes of the fewest shards of at most `shard_size` that hold `total`, as even as can be."""
    shards = -(-total // shard_size)
    if not shards:
        return []
    base, extra = divmod(total, shards)
    return [base + (i < extra) for i in range(shards)]


@dataclass(frozen=True)
class Slice:
    """Kept images of one source shard, in export order, at positions first, first + 1, ..."""

    dataset: str
    source: dict  # {"data", "format", "format_options"}
    shard: Shard
    first: int
    image_ids: list[str]


@dataclass(frozen=True)
class Output:
    """One output shard (or part): the positions first .. first + planned - 1."""

    name: str
    first: int
    planned: int
    slices: list[Slice]


@dataclass(frozen=True)
class Plan:
    outputs: list[Output]
    problems: list[tuple[int, dict]]  # (position, problem): kept rows whose shard is gone
    source_shards: int  # distinct source shards read


def plan_outputs(
    kept: Kept, storage: StorageOptions | None, shard_size: int, name_pattern: str
) -> Plan:
    """Cuts the kept rows into outputs of balanced size, each a run of source slices."""
    rows = kept.rows.combine_chunks()
    sizes = balanced_sizes(rows.num_rows, shard_size)
    starts = np.cumsum([0, *sizes])  # output i holds positions starts[i] .. starts[i+1] - 1
    # A new slice begins wherever the (dataset, shard) changes or an output begins.
    changed = np.zeros(rows.num_rows, bool)
    for name in ("dataset", "shard"):
        column = rows[name]
        changed[1:] |= pc.fill_null(pc.not_equal(column[1:], column[:-1]), True).to_numpy(
            zero_copy_only=False
        )
    bounds = np.union1d(np.flatnonzero(changed), starts)  # starts holds 0 and K
    listed = {d: _listed_shards(kept, d, storage) for d in kept.datasets}
    slices: list[list[Slice]] = [[] for _ in sizes]
    problems, read = [], set()
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        dataset, key = rows["dataset"][lo].as_py(), rows["shard"][lo].as_py()
        image_ids = rows["image_id"].slice(lo, hi - lo).to_pylist()
        shard = listed[dataset].get(key)
        if shard is None:
            message = f"shard {key} is no longer in {kept.selection.source(dataset)['data']}"
            problems += [
                (lo + i, problem(dataset, image_id, key, MISSING, message))
                for i, image_id in enumerate(image_ids)
            ]
            continue
        output = int(np.searchsorted(starts, lo, side="right")) - 1
        slices[output].append(Slice(dataset, kept.selection.source(dataset), shard, lo, image_ids))
        read.add((dataset, key))
    outputs = [
        Output(name_pattern.format(i), int(starts[i]), size, slices[i])
        for i, size in enumerate(sizes)
    ]
    return Plan(outputs, problems, len(read))


def _listed_shards(kept: Kept, dataset: str, storage: StorageOptions | None) -> dict[str, Shard]:
    source = kept.selection.source(dataset)
    fs, root = filesystem(source["data"], storage)
    fmt = get_format(source["format"], **source["format_options"])
    try:
        return {s.key: s for s in fmt.list_shards(fs, root)}
    except ShardError as e:
        raise ExportError(f"{dataset}: cannot list the shards of {source['data']}: {e}") from e


def samples(
    output: Output,
    storage: StorageOptions | None,
    problems: list[tuple[int, dict]],
    *,
    name_extensions: bool = False,
) -> Iterator[tuple[int, dict]]:
    """(position, sample) of the output's deliverable images in export order; the others go
    to `problems`. A sample: dataset, image_id, identity, image and, with `name_extensions`,
    `ext` (the bytes' image format; images of no known format are `unsupported`)."""
    for piece in output.slices:
        waiting: dict[int, tuple[dict | None, dict | None]] = {}
        turn = 0  # index into the slice of the next sample due
        for index, settled in _outcomes(piece, storage, name_extensions):
            waiting[index] = settled
            while turn in waiting:
                sample, failure = waiting.pop(turn)
                if sample is not None:
                    yield piece.first + turn, sample
                else:
                    problems.append((piece.first + turn, failure))
                turn += 1


def _outcomes(
    piece: Slice, storage: StorageOptions | None, name_extensions: bool
) -> Iterator[tuple[int, tuple[dict | None, dict | None]]]:
    """(index in the slice, (sample, None) or (None, problem)) for every wanted index once,
    in the reader's order, then those whose image never came by. A selection's keys are
    unique, so each image_id is wanted at one index."""
    wanted = {image_id: index for index, image_id in enumerate(piece.image_ids)}
    broke = None  # why the shard ended early, if it did
    source, key = piece.source, piece.shard.key
    rows = wanted_rows(
        source["format"], source["format_options"], source["data"], storage, piece.shard, wanted
    )
    for row in rows:
        if row["image_id"] == key and row["status"] != OK:
            broke = row["error"]
            continue
        yield wanted.pop(row["image_id"]), _outcome(piece, row, name_extensions)
    for image_id, index in wanted.items():
        if broke is not None:
            kind, message = UNREADABLE, f"not reached: {broke}"
        else:
            kind, message = MISSING, f"not in source shard {key}"
        yield index, (None, problem(piece.dataset, image_id, key, kind, message))


def _outcome(piece: Slice, row: dict, name_extensions: bool) -> tuple[dict | None, dict | None]:
    def failed(kind: str, message: str) -> tuple[None, dict]:
        return None, problem(piece.dataset, row["image_id"], piece.shard.key, kind, message)

    if row["status"] != OK:
        return failed(UNREADABLE, row["error"])
    ext = image_extension(row["image"]) if name_extensions else None
    if name_extensions and ext is None:
        return failed(UNSUPPORTED, "not an image format a tar member can be named for")
    sample = {"dataset": piece.dataset, "image_id": row["image_id"], "identity": row["identity"]}
    return {**sample, "image": row["image"], "ext": ext}, None


def export_outputs(
    kept: Kept,
    plan: ExportPlan,
    write: RemoteFunction,
    name_pattern: str,
    noun: str,
    progress=print,
) -> ExportSummary:
    """A folder export of planned outputs: `write(output, out, storage)`, a Ray task returning
    (images written, [(position, problem)]), makes each one; Ray bounds how many run at once
    by their CPU requests. The completion record comes last."""
    fs, root = filesystem(plan.out, plan.storage)
    require_empty(fs, root, plan.out)
    summary = summary_for(kept, plan)
    planned = plan_outputs(kept, plan.storage, plan.shard_size, name_pattern)
    progress(
        f"writing {kept.rows.num_rows} images into {len(planned.outputs)} {noun} "
        f"from {planned.source_shards} source shards"
    )
    tasks = [write.remote(output, plan.out, plan.storage) for output in planned.outputs]
    pending, step = list(tasks), every(len(tasks))
    while pending:
        _, pending = ray.wait(pending, num_returns=min(step, len(pending)))
        progress(f"wrote {len(tasks) - len(pending)}/{len(tasks)} {noun}")
    problems = list(planned.problems)
    for output, (images, failed) in zip(planned.outputs, ray.get(tasks), strict=True):
        shard = {"name": output.name, "first": output.first, "planned": output.planned}
        summary.shards.append({**shard, "images": images})
        problems += failed
    problems.sort(key=lambda p: p[0])  # export order
    summary.problems = [p for _, p in problems]
    summary.images = sum(s["images"] for s in summary.shards)
    summary.files = [s["name"] for s in summary.shards]
    if fs.exists(posixpath.join(root, PARTIAL)):  # empty folders the moves left behind
        fs.rm(posixpath.join(root, PARTIAL), recursive=True)
    write_record(fs, root, summary)
    return summary
