"""Regrouping a table's rows across Ray tasks through scratch Parquet files, so that no
process holds more than one task's share of the rows.

A map task sorts its rows by bucket and writes them as one scratch file with one row group
per bucket (`scatter`), saying where each bucket's rows are; the task of a bucket then reads
that row group of every scratch file (`read_parts`). Scratch files live in a folder of their
own under the table they serve, removed when the work ends (`scratch`); a crashed run's
leftovers are orphans to `fiqa maintain`.
"""

from __future__ import annotations

import contextlib
import itertools
import posixpath
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.cluster import connect
from pipeline.storage import StorageOptions, arrow_filesystem, filesystem

ROWS_PER_MAP = 1_000_000  # rows one map task reads and scatters


@dataclass(frozen=True)
class Part:
    """Rows of a Parquet file: all of them, or those of some of its row groups."""

    path: str  # URI
    row_groups: tuple[int, ...] | None = None


def read_parts(
    parts: Sequence[Part], columns: Sequence[str], storage: StorageOptions | None
) -> pa.Table:
    """The rows of `parts`, in order, with `columns` only."""
    tables = []
    for part in parts:
        fs, path = arrow_filesystem(part.path, storage)
        with fs.open_input_file(path) as f:
            reader = pq.ParquetFile(f)
            if part.row_groups is None:
                tables.append(reader.read(columns=list(columns)))
            else:
                tables.append(reader.read_row_groups(part.row_groups, columns=list(columns)))
    return pa.concat_tables(tables) if tables else pa.table({})


def scatter(
    rows: pa.Table, buckets: np.ndarray, folder: str, storage: StorageOptions | None
) -> dict[int, Part]:
    """Write `rows` into one new file under `folder`, bucket by bucket (`buckets[i]` is row
    i's), and say where each bucket's rows are."""
    order = np.argsort(buckets, kind="stable")
    rows, buckets = rows.take(pa.array(order)), buckets[order]
    present, starts = np.unique(buckets, return_index=True)
    ends = [*starts[1:].tolist(), len(buckets)]
    uri = posixpath.join(folder, f"{uuid.uuid4().hex}.parquet")
    fs, path = arrow_filesystem(uri, storage)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    where = {}
    with fs.open_output_stream(path) as out, pq.ParquetWriter(out, rows.schema) as writer:
        for number, (bucket, start, end) in enumerate(
            zip(present.tolist(), starts.tolist(), ends, strict=True)
        ):
            writer.write_table(rows.slice(start, end - start), row_group_size=end - start)
            where[bucket] = Part(uri, (number,))
    return where


def batches(files: Sequence[tuple[str, int]], rows_per_batch: int) -> list[list[str]]:
    """The file URIs of (URI, rows) cut into consecutive batches of about `rows_per_batch` rows
    (ROWS_PER_MAP: one map task's input)."""
    out: list[list[str]] = [[]]
    held = 0
    for uri, rows in files:
        if held and held + rows > rows_per_batch:
            out.append([])
            held = 0
        out[-1].append(uri)
        held += rows
    return out


@contextlib.contextmanager
def scratch(location: str, storage: StorageOptions | None) -> Iterator[str]:
    """A new folder URI under `location`, removed with everything in it afterwards."""
    folder = posixpath.join(location, f"scratch-{uuid.uuid4().hex[:12]}")
    try:
        yield folder
    finally:
        fs, path = filesystem(folder, storage)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)


def run_tasks(
    function: Callable,
    calls: Sequence[tuple],
    progress: Callable[[str], None],
    noun: str,
    combine: Callable[[object], None],
    shared: tuple = (),
) -> None:
    """`function(*call, *shared)` for every call as Ray tasks, each result handed to `combine`
    as it comes (results never pile up on the driver); `shared` is stored once for all of
    them. A single call runs here, without Ray."""
    if len(calls) == 1:
        combine(function(*calls[0], *shared))
        return
    connect()
    remote = ray.remote(num_cpus=1, max_retries=3)(function)
    stored = [ray.put(value) for value in shared]
    # Tasks are submitted as others finish, so that a million of them are never all queued.
    in_flight = max(64, 2 * int(ray.cluster_resources().get("CPU", 1)))
    waiting = iter(calls)
    pending = [remote.remote(*call, *stored) for call in itertools.islice(waiting, in_flight)]
    done, step = 0, max(1, len(calls) // 10)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        pending += [remote.remote(*call, *stored) for call in itertools.islice(waiting, 1)]
        combine(ray.get(ready[0]))
        done += 1
        if done % step == 0 or not pending:
            progress(f"{noun}: {done}/{len(calls)}")
