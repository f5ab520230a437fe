"""The kept keys in export order, one group of consecutive positions at a time.

The driver counts the kept images of each source shard (an aggregate over the selection) and
orders the shards: by dataset, then by shard with numbers compared as numbers. The K kept
images take positions 0 .. K-1 in that order (within a shard, by image_id compared the same
way), so each shard's images hold a run of positions known from the counts alone. The runs
are cut into groups of about ROWS_PER_GROUP positions, at output boundaries for the targets
that write shards; a source shard on a group boundary belongs to both groups. With more than
one group, map tasks send the selection's kept rows to their groups (`pipeline/shuffle.py`);
each group's task sorts its rows, keeps its positions and does the target's work on them.
No process holds more than a group's keys or the shards' counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyiceberg.catalog import Catalog

from pipeline import shuffle
from pipeline.datafiles import FileLayout
from pipeline.export.base import ExportError, natural_key
from pipeline.query import sql_literal
from pipeline.selection import SelectionError, selection_head
from pipeline.shuffle import Part, batches, read_parts, run_tasks, scatter
from pipeline.storage import StorageOptions, arrow_filesystem, parse_uri

ROWS_PER_GROUP = 250_000  # keys one group's task sorts
KEY_COLUMNS = ("dataset", "shard", "image_id", "identity")


@dataclass(frozen=True)
class Kept:
    """What an export knows of the selection before it reads keys: the kept images' counts per
    source shard in export order (`shard_counts`), and where the selection's rows are."""

    name: str  # the selection's full table name
    snapshot_id: int
    info: dict  # what `fiqa filter` recorded
    dataset: str | None  # the dataset exported, None for all
    shards: pa.Table  # dataset, shard, count, start
    files: list[tuple[str, int]]  # the selection's data files: (URI, rows)
    location: str  # the selection table's data folder: scratch space goes under it

    @property
    def total(self) -> int:
        return int(pc.sum(self.shards["count"]).as_py() or 0)

    @property
    def datasets(self) -> list[str]:
        return sorted(pc.unique(self.shards["dataset"]).to_pylist())

    def source(self, dataset: str) -> dict:
        """Where `dataset`'s images are: {"data": URI, "format": name, "format_options": {}}."""
        try:
            return self.info["sources"][dataset]
        except KeyError:
            raise SelectionError(
                f"{self.name}: no source recorded for dataset {dataset!r} (score it again with "
                "this version of fiqa to record where its images are)"
            ) from None


def load_kept(
    catalog: Catalog, name: str, dataset: str | None, storage: StorageOptions | None
) -> Kept:
    """Selection `name`'s kept images of `dataset` (or of every dataset), counted per shard."""
    snapshot_id, info = selection_head(catalog, name)
    present = sorted(info["summary"]["datasets"])
    if dataset is not None and dataset not in present:
        raise ExportError(f"{name} has no dataset {dataset!r}; it holds {', '.join(present)}")
    table = catalog.load_table(name)
    files = [
        (t.file.file_path, t.file.record_count)
        for t in table.scan(snapshot_id=snapshot_id).plan_files()
    ]
    shards = shard_counts([uri for uri, _ in files], dataset, storage)
    layout = FileLayout.of(table)
    kept = Kept(name, snapshot_id, info, dataset, shards, files, layout.location)
    if kept.total == 0:
        what = f" of {dataset}" if dataset else ""
        raise ExportError(f"{name} keeps no images{what}: nothing to export")
    return kept


def shard_counts(
    files: Sequence[str], dataset: str | None, storage: StorageOptions | None
) -> pa.Table:
    """(dataset, shard, count, start) of the kept images of every source shard in export
    order; `start` is the position of the shard's first kept image."""
    if not files:
        return pa.table({"dataset": [], "shard": [], "count": [], "start": []})
    fs, _ = arrow_filesystem(files[0], storage)
    rows = pads.dataset([parse_uri(f).path for f in files], format="parquet", filesystem=fs)
    where = "keep" + (f" AND dataset = {sql_literal(dataset)}" if dataset is not None else "")
    with duckdb.connect() as connection:
        connection.register("selection", rows)
        counts = connection.sql(
            f"SELECT dataset, shard, count(*) AS count FROM selection WHERE {where} "
            "GROUP BY dataset, shard"
        ).to_arrow_table()
    names, shards = counts["dataset"].to_pylist(), counts["shard"].to_pylist()
    order = sorted(range(len(names)), key=lambda i: (names[i], natural_key(shards[i])))
    counts = counts.take(pa.array(order, pa.int64()))
    sizes = counts["count"].to_numpy()
    return counts.append_column("start", pa.array(np.cumsum(sizes) - sizes, pa.int64()))


@dataclass(frozen=True)
class Group:
    number: int
    first: int  # positions first .. end - 1
    end: int
    shards: pa.Table  # dataset, shard, start, rank: the source shards with kept images here


def plan_groups(shards: pa.Table, cuts: np.ndarray | None = None) -> list[Group]:
    """Groups of about ROWS_PER_GROUP positions; with `cuts` (sorted positions, 0 first), each
    group begins at one of them."""
    rows_per_group = ROWS_PER_GROUP
    total = int(pc.sum(shards["count"]).as_py() or 0)
    if cuts is None:
        cuts = np.arange(0, total, rows_per_group)
    bounds, last = [], -rows_per_group
    for cut in cuts.tolist():
        if cut - last >= rows_per_group:
            bounds.append(cut)
            last = cut
    bounds.append(total)
    starts = shards["start"].to_numpy()
    ends = starts + shards["count"].to_numpy()
    ranked = shards.select(["dataset", "shard", "start"]).append_column(
        "rank", pa.array(np.arange(len(shards)), pa.int64())
    )
    groups = []
    for number, (first, end) in enumerate(itertools.pairwise(bounds)):
        lo, hi = np.searchsorted(ends, first, side="right"), np.searchsorted(starts, end)
        groups.append(Group(number, first, end, ranked.slice(lo, hi - lo)))
    return groups


def _sorted_rows(group: Group, rows: pa.Table) -> pa.Table:
    """The group's rows in export order with their `position`, only positions of the group."""
    rows = rows.join(group.shards, ["dataset", "shard"], join_type="inner")
    ranks, image_ids = rows["rank"].to_pylist(), rows["image_id"].to_pylist()
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], natural_key(image_ids[i])))
    rows = rows.take(pa.array(order, pa.int64()))
    rank = rows["rank"].to_numpy()
    index = np.arange(len(rows))
    run_first = np.zeros(len(rows), np.int64)  # index of the first row of each row's shard
    if len(rows):
        changed = np.flatnonzero(np.diff(rank)) + 1
        run_first = np.repeat(np.r_[0, changed], np.diff(np.r_[0, changed, len(rows)]))
    position = rows["start"].to_numpy() + index - run_first
    inside = (position >= group.first) & (position < group.end)
    rows = rows.append_column("position", pa.array(position, pa.int64()))
    return rows.filter(pa.array(inside)).select(["position", *KEY_COLUMNS])


def _kept_rows(parts: list[Part], dataset: str | None, storage) -> pa.Table:
    rows = read_parts(parts, (*KEY_COLUMNS, "keep"), storage)
    keep = rows["keep"].fill_null(False)
    if dataset is not None:
        keep = pc.and_(keep, pc.equal(rows["dataset"], dataset))
    return rows.filter(keep).select(list(KEY_COLUMNS))


def _scatter(
    files: list[str],
    dataset: str | None,
    folder: str,
    storage: StorageOptions | None,
    lookup: pa.Table,
) -> dict[int, Part]:
    """Send the kept rows of `files` to their groups (`lookup`: dataset, shard, group)."""
    rows = _kept_rows([Part(f) for f in files], dataset, storage)
    rows = rows.join(lookup, ["dataset", "shard"], join_type="inner")
    groups = rows["group"].to_numpy()
    return scatter(rows.drop_columns(["group"]), groups, folder, storage) if len(rows) else {}


def _run_group(
    group: Group,
    parts: list[Part],
    scattered: bool,
    dataset: str | None,
    storage: StorageOptions | None,
    work: Callable,
    args: tuple,
):
    """`work` on the group's rows: from scattered parts, or from the selection's own files."""
    if scattered:
        rows = read_parts(parts, KEY_COLUMNS, storage)
    else:
        rows = _kept_rows(parts, dataset, storage)
    return work(group, _sorted_rows(group, rows), *args)


def for_each_group(
    kept: Kept,
    groups: list[Group],
    work: Callable,
    args: tuple,
    combine: Callable[[object], None],
    folder: str,
    storage: StorageOptions | None,
    progress: Callable[[str], None],
) -> None:
    """`combine(work(group, rows, *args))` for every group, `rows` being its kept keys in export
    order (position, dataset, shard, image_id, identity); `work` runs in a Ray task. `folder`:
    scratch space."""
    if len(groups) == 1:
        parts = [Part(uri) for uri, _ in kept.files]
        combine(_run_group(groups[0], parts, False, kept.dataset, storage, work, args))
        return
    lookup = pa.concat_tables(
        g.shards.select(["dataset", "shard"]).append_column(
            "group", pa.array(np.full(len(g.shards), g.number), pa.int64())
        )
        for g in groups
    )
    by_group: dict[int, list[Part]] = {}

    def gathered(parts: dict[int, Part]) -> None:
        for number, part in parts.items():
            by_group.setdefault(number, []).append(part)

    progress(f"sending {kept.total:,} kept keys to {len(groups)} groups")
    calls = [(b, kept.dataset, folder, storage) for b in batches(kept.files, shuffle.ROWS_PER_MAP)]
    run_tasks(_scatter, calls, progress, "sent", gathered, shared=(lookup,))
    calls = [(g, by_group.get(g.number, []), True, kept.dataset, storage) for g in groups]
    run_tasks(_run_group, calls, progress, "groups", combine, shared=(work, args))
