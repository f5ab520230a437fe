"""`fiqa filter`: a policy applied to one snapshot of the manifest, written as a selection.

A manifest of up to ROWS_PER_BUCKET rows of the model takes the policy's single query
(`pipeline/policy.py`) in this process. A larger one is filtered in buckets of identities,
so that no process holds more than a bucket. Every per-identity rule needs only the rows of
one identity, so the rows are shuffled into buckets by a hash of (dataset, identity)
(`pipeline/shuffle.py`; rows without an identity by their image_id), and one Ray task per
bucket runs the policy's query with DuckDB over its bucket, writes the bucket's selection
rows as a data file of the selection table and returns it with the bucket's summary. The one
global rule, `drop_bottom_percent`, is decided before: its cut-off is the k-th lowest image in
the policy's order (quality, dataset, image_id), found exactly from a histogram of the
qualities that the map tasks count and the rows of the one histogram bin that holds rank k.
Each bucket then drops what ranks at or below the cut-off, which is what the single query's
window over the whole manifest drops. The selection's files are committed in one snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, EqualTo, In
from pyiceberg.manifest import DataFile

from pipeline.datafiles import FileLayout, delete_data_files, pack, unpack, write_data_file
from pipeline.manifest import dataset_sources, snapshot_files
from pipeline.policy import (
    Cut,
    FilterPolicy,
    PolicyError,
    apply_policy,
    newest_model,
    policy_sql,
    unscored_datasets,
)
from pipeline.query import open_query
from pipeline.selection import ARROW_SCHEMA as SELECTION_SCHEMA
from pipeline.selection import (
    commit_selection,
    merge_summaries,
    selection_table,
    summarise,
    write_selection,
)
from pipeline.shuffle import ROWS_PER_MAP, Part, batches, read_parts, run_tasks, scatter, scratch
from pipeline.storage import StorageOptions, arrow_filesystem, parse_uri

COLUMNS = ("dataset", "image_id", "shard", "identity", "status", "quality", "model_id")
ROWS_PER_BUCKET = 500_000  # what one task holds, with DuckDB's windows over them
# The histogram counts the top bits of each quality's order-preserving 32-bit key: 2^20 bins,
# so that the bin holding the cut-off has few rows however the qualities are spread.
HISTOGRAM_BITS = 20
DUCKDB = {"threads": 1, "memory_limit": "512MB"}  # per task: one core, spilling beyond


def bucket_count(rows: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
    return max(1, math.ceil(rows / rows_per_bucket))


def ordered_keys(quality: np.ndarray) -> np.ndarray:
    """uint32 keys that order like the float32 qualities (-0.0 as 0.0; no NaN given)."""
    bits = (quality.astype(np.float32) + np.float32(0)).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def _in_global_scope(rows: pa.Table, policy: FilterPolicy) -> np.ndarray:
    """Rows the global rule ranks: scored, and kept by the row-local rules before it."""
    quality = rows["quality"].to_numpy(zero_copy_only=False)  # nulls as NaN
    scope = ~np.isnan(quality)
    if policy.ok_only:
        scope &= rows["status"].to_numpy(zero_copy_only=False) == "ok"
    if policy.min_quality is not None:
        with np.errstate(invalid="ignore"):
            scope &= quality >= policy.min_quality
    return scope


@dataclass(frozen=True)
class Mapped:
    parts: dict[int, Part]  # bucket -> its rows in this task's scratch file
    histogram: tuple[np.ndarray, np.ndarray] | None  # (bins, counts) of the global scope


def _map(
    files: list[str],
    policy: FilterPolicy,
    model_id: str,
    buckets: int,
    folder: str,
    storage: StorageOptions | None,
) -> Mapped:
    rows = read_parts([Part(f) for f in files], COLUMNS, storage)
    wanted = pc.equal(rows["model_id"], model_id)
    if policy.datasets:
        wanted = pc.and_(wanted, pc.is_in(rows["dataset"], pa.array(policy.datasets)))
    rows = rows.filter(wanted)
    with duckdb.connect(config=DUCKDB) as connection:
        connection.register("rows", rows)
        bucket = connection.sql(  # insertion order is kept: one bucket per row, in order
            "SELECT CAST(hash(dataset, identity IS NULL, coalesce(identity, image_id)) "
            f"% {buckets} AS INTEGER) AS bucket FROM rows"
        ).to_arrow_table()["bucket"]
    histogram = None
    if policy.drop_bottom_percent:
        quality = rows["quality"].to_numpy(zero_copy_only=False)[_in_global_scope(rows, policy)]
        histogram = np.unique(ordered_keys(quality) >> (32 - HISTOGRAM_BITS), return_counts=True)
    parts = scatter(rows, bucket.to_numpy(), folder, storage) if len(rows) else {}
    return Mapped(parts, histogram)


def _bin_rows(
    parts: list[Part],
    policy: FilterPolicy,
    bin_: int,
    folder: str,
    storage: StorageOptions | None,
) -> Part | None:
    """The bucket's global-scope rows whose quality falls in histogram bin `bin_`, in scratch."""
    rows = read_parts(parts, ("dataset", "image_id", "status", "quality"), storage)
    quality = rows["quality"].to_numpy(zero_copy_only=False)
    scope = _in_global_scope(rows, policy)
    chosen = np.zeros(len(rows), bool)
    chosen[scope] = (ordered_keys(quality[scope]) >> (32 - HISTOGRAM_BITS)) == bin_
    if not chosen.any():
        return None
    picked = rows.filter(pa.array(chosen)).select(["quality", "dataset", "image_id"])
    return scatter(picked, np.zeros(len(picked), np.int64), folder, storage)[0]


def _select(
    parts: list[Part],
    policy: FilterPolicy,
    model_id: str,
    cut: Cut | None,
    layout: FileLayout,
    storage: StorageOptions | None,
) -> tuple[bytes | None, dict]:
    """Apply the policy to one bucket; (its selection data file, packed; its summary)."""
    rows = read_parts(parts, COLUMNS, storage)
    with duckdb.connect(config=DUCKDB) as connection:
        connection.register("manifest", rows)
        selected = connection.sql(policy_sql(policy, model_id, cut)).to_arrow_table()
    if not len(selected):
        return None, {}
    selected = selected.select(SELECTION_SCHEMA.names).cast(SELECTION_SCHEMA)
    return pack(write_data_file(selected, layout, storage)), summarise(selected)


def cut_off(
    histogram: np.ndarray,
    rank: int,
    buckets: list[list[Part]],
    policy: FilterPolicy,
    folder: str,
    storage: StorageOptions | None,
    progress: Callable[[str], None],
) -> Cut:
    """The row of the global scope at `rank` (1-based) in (quality, dataset, image_id) order:
    the histogram says which bin holds it, one pass gathers that bin's rows, and DuckDB ranks
    them (spilling to disk if the bin is large)."""
    cumulative = np.cumsum(histogram)
    bin_ = int(np.searchsorted(cumulative, rank))  # the first bin whose count reaches rank
    below = int(cumulative[bin_] - histogram[bin_])
    found: list[Part] = []
    calls = [(parts, policy, bin_, folder, storage) for parts in buckets]
    run_tasks(_bin_rows, calls, progress, "cut-off", lambda p: p and found.append(p))
    fs, _ = arrow_filesystem(found[0].path, storage)
    rows = pads.dataset([parse_uri(p.path).path for p in found], format="parquet", filesystem=fs)
    with duckdb.connect(config={"memory_limit": DUCKDB["memory_limit"]}) as connection:
        connection.register("rows", rows)
        [(quality, dataset, image_id)] = connection.sql(
            "SELECT quality, dataset, image_id FROM rows ORDER BY quality, dataset, image_id "
            f"LIMIT 1 OFFSET {rank - below - 1}"
        ).fetchall()
    return Cut(float(quality), dataset, image_id)


def select_in_buckets(
    files: Sequence[tuple[str, int]],
    policy: FilterPolicy,
    model_id: str,
    buckets: int,
    rows_per_map: int,
    layout: FileLayout,
    storage: StorageOptions | None,
    progress: Callable[[str], None] = print,
) -> tuple[list[DataFile], dict]:
    """The selection's data files and summary; `files`: the manifest files (URI, rows) of the
    model in scope, read by map tasks of about `rows_per_map` rows; `layout`: where the
    selection's files go."""
    with scratch(layout.location, storage) as folder:
        by_bucket: dict[int, list[Part]] = {}
        histogram = np.zeros(1 << HISTOGRAM_BITS, np.int64)

        def gathered(mapped: Mapped) -> None:
            for bucket, part in mapped.parts.items():
                by_bucket.setdefault(bucket, []).append(part)
            if mapped.histogram is not None:
                np.add.at(histogram, *mapped.histogram)

        progress(f"shuffling {sum(r for _, r in files):,} rows into {buckets} buckets")
        calls = [
            (b, policy, model_id, buckets, folder, storage) for b in batches(files, rows_per_map)
        ]
        run_tasks(_map, calls, progress, "shuffled", gathered)
        bucket_parts = [by_bucket[b] for b in sorted(by_bucket)]
        cut = None
        if policy.drop_bottom_percent:
            scope_rows = int(histogram.sum())
            rank = math.floor(scope_rows * policy.drop_bottom_percent / 100 + 1e-9)
            cut = (
                Cut()
                if rank == 0
                else cut_off(histogram, rank, bucket_parts, policy, folder, storage, progress)
            )
        data_files: list[DataFile] = []
        summaries: list[dict] = []

        def selected(result: tuple[bytes | None, dict]) -> None:
            if result[0] is not None:
                data_files.append(unpack(result[0]))
                summaries.append(result[1])

        calls = [(parts, policy, model_id, cut, layout, storage) for parts in bucket_parts]
        try:
            run_tasks(_select, calls, progress, "selected", selected)
        except BaseException:
            delete_data_files(data_files, storage)  # the finished buckets' files
            raise
    return data_files, merge_summaries(summaries)


@dataclass(frozen=True)
class Filtered:
    snapshot_id: int  # of the selection
    info: dict  # what the selection recorded (pipeline/selection.py)
    model_id: str
    unscored: list[str]  # datasets in scope that model_id has not scored


def filter_manifest(
    catalog: Catalog,
    table: str,
    name: str,
    policy: FilterPolicy,
    storage: StorageOptions | None = None,
    *,
    rows_per_bucket: int = ROWS_PER_BUCKET,
    progress: Callable[[str], None] = print,
) -> Filtered:
    """Apply `policy` to the current snapshot of manifest `table` and replace selection `name`
    (a full table name) with the result."""
    with open_query(catalog, table, selections=(), storage=storage) as query:
        model_id = policy.model_id or newest_model(query, policy.datasets)
        unscored = unscored_datasets(query, model_id, policy.datasets)
        manifest = catalog.load_table(table)
        wanted = EqualTo("model_id", model_id)
        if policy.datasets:
            wanted = And(wanted, In("dataset", policy.datasets))
        files = [
            (f.file_path, f.record_count)
            for f in snapshot_files(manifest, query.snapshot_id, wanted)
        ]
        buckets = bucket_count(sum(rows for _, rows in files), rows_per_bucket)
        info = {
            "manifest": table,
            "manifest_snapshot": query.snapshot_id,
            "model_id": model_id,
            "policy": policy.model_dump(exclude_none=True),
            "sources": dataset_sources(manifest),
        }
        if buckets == 1:
            rows, _ = apply_policy(query, policy.model_copy(update={"model_id": model_id}))
            snapshot, info = write_selection(catalog, name, rows, info, storage)
            return Filtered(snapshot, info, model_id, unscored)
    layout = FileLayout.of(selection_table(catalog, name))
    data_files, summary = select_in_buckets(
        files,
        policy,
        model_id,
        buckets,
        min(rows_per_bucket, ROWS_PER_MAP),
        layout,
        storage,
        progress,
    )
    if not summary.get("images"):
        raise PolicyError(f"{table} has no rows for model {model_id}")
    snapshot, info = commit_selection(catalog, name, data_files, summary, info)
    return Filtered(snapshot, info, model_id, unscored)
