"""The kept samples, streamed from their source shards by the tasks that write the output.

The K kept images, numbered 0 .. K-1 in export order (a row's position, which is also its
sample key), are cut into output shards of `balanced_sizes(K, shard_size)` consecutive
positions. Each group of kept keys (`kept.py`, cut at output boundaries) writes the keys of
its outputs into a scratch file, one row group per output, so the driver holds no key. The
rows of one source shard are adjacent in export order, so each output is a run of slices:
one source shard and the image_ids wanted from it. A source shard on an output's boundary is
read by both outputs' tasks, each taking its own slice: reading it twice is the price of
never gathering samples anywhere but in the task that writes them.

One Ray task per output streams its slices through the format's reader (`wanted_rows`),
stops a shard once all its wanted ids have come by, and hands the samples to its writer in
export order. Only a sample the reader gives ahead of its turn waits, so a task holds at
most one slice's wanted rows beyond what its writer buffers. A kept image that cannot be
delivered (missing, unreadable, unsupported) is a problem; it leaves a gap in the positions
and makes its output one smaller, so output sizes stay balanced to within the failures.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.datasource import wanted_rows
from pipeline.export.base import (
    MISSING,
    PARTIAL,
    UNREADABLE,
    UNSUPPORTED,
    ExportError,
    ExportPlan,
    ExportSummary,
    problem,
    require_empty,
    summary_for,
    write_record,
)
from pipeline.export.kept import Group, Kept, for_each_group, plan_groups
from pipeline.formats import get_format
from pipeline.formats.base import Shard, ShardError
from pipeline.shuffle import Part, read_parts, run_tasks, scatter
from pipeline.status import OK
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
    """One output shard (or part): the positions first .. first + planned - 1, whose keys are
    in `keys` (position, dataset, shard, image_id, identity)."""

    name: str
    first: int
    planned: int
    keys: Part


def _outputs(
    group: Group,
    rows: pa.Table,
    starts: np.ndarray,
    name_pattern: str,
    folder: str,
    storage: StorageOptions | None,
) -> list[Output]:
    """The outputs of a group (which begins and ends at output boundaries), keys in scratch."""
    number = np.searchsorted(starts, rows["position"].to_numpy(), side="right") - 1
    parts = scatter(rows, number, folder, storage)
    return [
        Output(name_pattern.format(i), int(starts[i]), int(starts[i + 1] - starts[i]), part)
        for i, part in sorted(parts.items())
    ]


def _slices(
    output: Output,
    listed: dict[str, dict[str, Shard]],
    sources: dict[str, dict],
    storage: StorageOptions | None,
    problems: list[tuple[int, dict]],
) -> list[Slice]:
    """The output's runs of one source shard each; kept rows of a shard that is gone are
    `problems`."""
    rows = read_parts([output.keys], ("position", "dataset", "shard", "image_id"), storage)
    datasets, shards = rows["dataset"].to_pylist(), rows["shard"].to_pylist()
    image_ids, positions = rows["image_id"].to_pylist(), rows["position"].to_pylist()
    slices, lo = [], 0
    for hi in range(1, len(rows) + 1):
        if hi < len(rows) and (datasets[hi], shards[hi]) == (datasets[lo], shards[lo]):
            continue
        dataset, key = datasets[lo], shards[lo]
        shard = listed[dataset].get(key)
        if shard is None:
            message = f"shard {key} is no longer in {sources[dataset]['data']}"
            problems += [
                (positions[i], problem(dataset, image_ids[i], key, MISSING, message))
                for i in range(lo, hi)
            ]
        else:
            slices.append(Slice(dataset, sources[dataset], shard, positions[lo], image_ids[lo:hi]))
        lo = hi
    return slices


def _listed_shards(kept: Kept, dataset: str, storage: StorageOptions | None) -> dict[str, Shard]:
    source = kept.source(dataset)
    fs, root = filesystem(source["data"], storage)
    fmt = get_format(source["format"], **source["format_options"])
    try:
        return {s.key: s for s in fmt.list_shards(fs, root)}
    except ShardError as e:
        raise ExportError(f"{dataset}: cannot list the shards of {source['data']}: {e}") from e


def samples(
    output: Output,
    listed: dict[str, dict[str, Shard]],
    sources: dict[str, dict],
    storage: StorageOptions | None,
    problems: list[tuple[int, dict]],
    *,
    name_extensions: bool = False,
) -> Iterator[tuple[int, dict]]:
    """(position, sample) of the output's deliverable images in export order; the others go
    to `problems`. A sample: dataset, image_id, identity, image and, with `name_extensions`,
    `ext` (the bytes' image format; images of no known format are `unsupported`). `listed`:
    each dataset's source shards by key; `sources`: where each dataset is."""
    for piece in _slices(output, listed, sources, storage, problems):
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


def _produce(
    output: Output,
    out: str,
    storage: StorageOptions | None,
    write: Callable,
    listed: dict[str, dict[str, Shard]],
    sources: dict[str, dict],
) -> tuple[Output, int, list[tuple[int, dict]]]:
    return output, *write(output, out, storage, listed, sources)


def export_outputs(
    kept: Kept,
    plan: ExportPlan,
    write: Callable,
    name_pattern: str,
    noun: str,
    folder: str,
    progress=print,
) -> ExportSummary:
    """A folder export of planned outputs: `write(output, out, storage, listed, sources)`,
    run in a Ray task, returns (images written, [(position, problem)]) of each. The
    completion record comes last."""
    fs, root = filesystem(plan.out, plan.storage)
    require_empty(fs, root, plan.out)
    summary = summary_for(kept, plan)
    starts = np.cumsum([0, *balanced_sizes(kept.total, plan.shard_size)])
    outputs: list[Output] = []
    groups = plan_groups(kept.shards, starts[:-1])
    work = (starts, name_pattern, folder, plan.storage)
    for_each_group(kept, groups, _outputs, work, outputs.extend, folder, plan.storage, progress)
    outputs.sort(key=lambda o: o.first)
    progress(
        f"{'planned' if plan.dry_run else 'writing'} {kept.total} images into {len(outputs)} "
        f"{noun} from {len(kept.shards)} source shards"
    )
    if plan.dry_run:
        summary.shards = [{"name": o.name, "first": o.first, "planned": o.planned} for o in outputs]
        summary.files = [o.name for o in outputs]
        return summary
    listed = {d: _listed_shards(kept, d, plan.storage) for d in kept.datasets}
    sources = {d: kept.source(d) for d in kept.datasets}
    written: list[tuple[Output, int, list[tuple[int, dict]]]] = []
    calls = [(output, plan.out, plan.storage) for output in outputs]
    run_tasks(
        _produce, calls, progress, f"wrote {noun}", written.append, shared=(write, listed, sources)
    )
    problems = []
    for output, images, failed in sorted(written, key=lambda w: w[0].first):
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
