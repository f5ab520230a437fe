"""Table maintenance of the manifest (`fiqa maintain`): compact, expire, remove orphans.

Scoring commits small data files (one per shard) in many snapshots, and every commit leaves
metadata behind. Maintenance, in this order:

1. compacts each (dataset, model_id) partition: its files below a target size are binned,
   each bin read (one at a time, by column name: files with and without Parquet field ids),
   sorted by (shard, image_id) and written as one file; one snapshot per partition, marked
   `fiqa.maintenance: compact`, replaces exactly the files read. Every maintenance snapshot
   also records `fiqa.rows-of`, the snapshot whose rows it holds, so that a selection made
   before maintenance is known to be still current (`same_rows`);
2. expires snapshots beyond the newest N that are older than a cut-off (never the current
   one), so the retained snapshots are always the newest ones. Before that, each dataset whose
   newest record of its source (`fiqa.source`, which `dataset_sources` reads) would go is
   given a snapshot that carries the source forward (`fiqa.maintenance: sources`, no data
   change), so expiry never needs to keep an old snapshot and its old files alive. The table
   property EXPIRED_BEFORE records the oldest snapshot kept, so that time travel to an
   expired snapshot is refused with a reason;
3. removes orphans: files under the table's data and metadata folders that neither the
   metadata nor any retained snapshot (manifest list, manifests, live data files)
   references. A scoring run in flight has written files it has not committed yet, so only
   files older than an age are removed.

Commits never rebase (NO_REBASE): a compaction commits onto the snapshot it read, and when a
scoring run committed meanwhile it is committed again onto the new head (appends never touch
the files it replaces) or dropped when another maintenance run replaced those files first.
Expiry only removes old snapshots, so it is re-planned and retried the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update.snapshot import ExpireSnapshots

from pipeline.datafiles import FileLayout, append_files, name_mapping, write_data_file
from pipeline.errors import FiqaError
from pipeline.manifest import ARROW_SCHEMA, open_table, partition_files
from pipeline.storage import StorageOptions, arrow_filesystem, parse_uri

MAINTENANCE = "fiqa.maintenance"  # snapshot summary: what a maintenance snapshot did
COMPACT, SOURCES = "compact", "sources"
# Snapshot summary of a maintenance snapshot: the newest snapshot that changed rows before it,
# whose rows it holds (parent ids cannot tell: expiry clears those of expired parents).
ROWS_OF = "fiqa.rows-of"
EXPIRED_BEFORE = "fiqa.expired-before"  # table property: snapshots before it were expired
COMMIT_ATTEMPTS = 5
MiB = 2**20
# The defaults of `fiqa maintain` (MaintenanceSettings) and of a plan made in code.
KEEP_LAST = 100
ORPHAN_AGE = "3d"
TARGET_FILE_MB = 128


class MaintenanceError(FiqaError, ValueError):
    """Maintenance that cannot go on (no such table, a table it must not compact, or
    commits that kept losing to concurrent writers); nothing half-done is left behind."""


AGE = re.compile(r"(\d+)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> datetime.timedelta:
    """`30m`, `36h`, `7d`, `2w` (or `0`) as a timedelta."""
    if text == "0":
        return datetime.timedelta(0)
    match = AGE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an age such as 30m, 36h, 7d or 2w")
    return datetime.timedelta(**{UNITS[match[2]]: int(match[1])})


def parse_cutoff(text: str, now: datetime.datetime) -> datetime.datetime:
    """An age before `now`, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return now - parse_age(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (30m, 36h, 7d, 2w) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class MaintenanceSettings(BaseModel):
    """How much history to keep and how to compact: shared by `fiqa maintain` and
    `fiqa curate` (its `maintain:` entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: int = Field(KEEP_LAST, ge=1, description="always keep the newest N snapshots")
    expire_older_than: str = Field(
        "7d",
        description="expire the snapshots beyond --keep-last that are older than this: an age "
        "(30m, 36h, 7d, 2w) or an ISO 8601 time (UTC)",
    )
    orphan_older_than: str = Field(
        ORPHAN_AGE,
        description="remove files that nothing references once they are older than this age "
        "(younger ones may belong to a scoring run still writing)",
    )
    target_file_mb: int = Field(
        TARGET_FILE_MB,
        gt=0,
        description="compact data files smaller than this (MiB) into files this big",
    )

    @field_validator("expire_older_than")
    @classmethod
    def cutoff(cls, value: str) -> str:
        parse_cutoff(value, datetime.datetime.now(datetime.UTC))
        return value

    @field_validator("orphan_older_than")
    @classmethod
    def age(cls, value: str) -> str:
        parse_age(value)
        return value

    def maintenance_plan(self, dry_run: bool = False) -> MaintenancePlan:
        now = datetime.datetime.now(datetime.UTC)
        return MaintenancePlan(
            keep_last=self.keep_last,
            expire_before=parse_cutoff(self.expire_older_than, now),
            orphan_age=parse_age(self.orphan_older_than),
            target_file_size=self.target_file_mb * MiB,
            dry_run=dry_run,
        )


@dataclass(frozen=True)
class MaintenancePlan:
    keep_last: int = KEEP_LAST  # snapshots always kept, newest first
    expire_before: datetime.datetime | None = None  # older ones may go (None: none do)
    # younger files stay
    orphan_age: datetime.timedelta = field(default_factory=lambda: parse_age(ORPHAN_AGE))
    target_file_size: int = TARGET_FILE_MB * MiB  # smaller data files are compacted
    dry_run: bool = False  # plan and report, change nothing


@dataclass
class MaintenanceSummary:
    table: str
    dry_run: bool
    data_files_before: int = 0
    data_files_after: int = 0
    files_compacted: int = 0  # replaced (or, in a dry run, to be replaced)
    files_written: int = 0
    rows_compacted: int = 0
    partitions_dropped: int = 0  # another maintenance run compacted them first
    snapshots_expired: int = 0
    sources_carried: list[str] = field(default_factory=list)
    orphans_removed: int = 0
    orphan_bytes: int = 0
    orphans_young: int = 0  # unreferenced but younger than the orphan age: kept
    snapshot: int | None = None  # current, afterwards
    snapshots_retained: int = 0
    oldest_snapshot: int | None = None
    oldest_snapshot_at: str | None = None
    location: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def maintain(
    catalog: Catalog,
    name: str,
    plan: MaintenancePlan,
    storage: StorageOptions | None = None,
    progress: Callable[[str], None] = print,
) -> MaintenanceSummary:
    """Compact, expire and remove orphans of manifest table `name` (see the module doc)."""
    if not catalog.table_exists(name):
        raise MaintenanceError(f"no manifest table {name!r}")
    table = open_table(catalog, name)
    summary = MaintenanceSummary(name, plan.dry_run, location=table.location())
    summary.data_files_before = data_file_count(table)
    compact(table, plan, storage, summary, progress)
    expiring = expire(table, plan, summary, progress)
    table.refresh()
    retained = [s for s in table.snapshots() if s.snapshot_id not in expiring]
    remove_orphans(table, retained, plan, storage, summary, progress)
    summary.data_files_after = (
        summary.data_files_before - summary.files_compacted + summary.files_written
        if plan.dry_run
        else data_file_count(table)
    )
    current = table.current_snapshot()
    summary.snapshot = current and current.snapshot_id
    summary.snapshots_retained = len(retained)
    if retained:
        oldest = min(retained, key=lambda s: s.timestamp_ms)
        summary.oldest_snapshot = oldest.snapshot_id
        summary.oldest_snapshot_at = snapshot_time(oldest)
    return summary


def data_file_count(table: Table) -> int:
    current = table.current_snapshot()
    return int(current.summary.get("total-data-files", 0)) if current else 0


def snapshot_time(snapshot: Snapshot) -> str:
    return (
        datetime.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# Compaction


def compact(
    table: Table,
    plan: MaintenancePlan,
    storage: StorageOptions | None,
    summary: MaintenanceSummary,
    progress: Callable[[str], None],
) -> None:
    partitions = table_partitions(table)
    layout: FileLayout | None = None  # made before the first file is written
    for dataset, model_id in partitions:
        groups = bins(partition_files(table, dataset, model_id), table, plan.target_file_size)
        if not groups:
            continue
        if not plan.dry_run:
            layout = layout or FileLayout.of(table)
            if not compact_partition(table, groups, layout, storage):
                summary.partitions_dropped += 1
                continue
        summary.files_compacted += sum(len(group) for group in groups)
        summary.files_written += len(groups)
        summary.rows_compacted += sum(f.record_count for group in groups for f in group)
    line = (
        f"compact: {'would replace' if plan.dry_run else 'replaced'} {summary.files_compacted} "
        f"small data files ({summary.rows_compacted} rows) of {len(partitions)} partitions by "
        f"{summary.files_written}"
    )
    if summary.partitions_dropped:
        line += f"; {summary.partitions_dropped} partitions were compacted by another run first"
    progress(line)


def table_partitions(table: Table) -> list[tuple[str, str]]:
    """The (dataset, model_id) partitions with data files in the current snapshot. Compaction
    reads data files whole, so a snapshot with row-level delete files is refused."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    found = set()
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA:
            raise MaintenanceError(
                f"{table.location()} has row-level delete files; compacting it would bring "
                "deleted rows back"
            )
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            spec = table.specs()[entry.data_file.spec_id]
            values = dict(
                zip((f.name for f in spec.fields), entry.data_file.partition, strict=True)
            )
            found.add((values["dataset"], values["model_id"]))
    return sorted(found)


def bins(files: Iterable[DataFile], table: Table, target: int) -> list[list[DataFile]]:
    """The partition's files below `target` bytes in groups of about `target` bytes, in
    shard order (so each compacted file holds a run of shards); a file alone stays as it is."""
    shard_id = table.schema().find_field("shard").field_id
    small = sorted(
        (f for f in files if f.file_size_in_bytes < target),
        key=lambda f: (f.lower_bounds.get(shard_id, b""), f.file_path),
    )
    groups, group, size = [], [], 0
    for data_file in small:
        group.append(data_file)
        size += data_file.file_size_in_bytes
        if size >= target:
            groups.append(group)
            group, size = [], 0
    groups.append(group)
    return [g for g in groups if len(g) > 1]


def compact_partition(
    table: Table, groups: list[list[DataFile]], layout: FileLayout, storage: StorageOptions | None
) -> bool:
    """Rewrite each group of one partition's files as one file (one group in memory at a
    time) and replace them all in one snapshot; False when another maintenance run replaced
    any of them first (the new files are deleted again)."""
    new = [rewrite(group, layout, storage) for group in groups]
    if replace_files(table, [f for group in groups for f in group], new):
        return True
    for data_file in new:
        fs, inner = arrow_filesystem(data_file.file_path, storage)
        with contextlib.suppress(OSError):  # left behind, it is an orphan a later run removes
            fs.delete_file(inner)
    return False


def rewrite(group: list[DataFile], layout: FileLayout, storage: StorageOptions | None) -> DataFile:
    """The rows of `group`, sorted by (shard, image_id), as one new data file."""
    expected = sum(f.record_count for f in group)
    rows = pa.concat_tables(read_data_file(f.file_path, storage) for f in group)
    if rows.num_rows != expected:
        raise MaintenanceError(
            f"the files to compact hold {rows.num_rows} rows, their metadata says {expected}"
        )
    rows = rows.sort_by([("shard", "ascending"), ("image_id", "ascending")])
    new = write_data_file(rows, layout, storage, prefix="compact-")
    if new.record_count != expected:
        raise MaintenanceError(f"{new.file_path}: wrote {new.record_count} of {expected} rows")
    return new


def read_data_file(path: str, storage: StorageOptions | None) -> pa.Table:
    """A data file's rows by column name (files written by workers have no field ids)."""
    fs, inner = arrow_filesystem(path, storage)
    return pq.read_table(inner, filesystem=fs, columns=ARROW_SCHEMA.names).cast(ARROW_SCHEMA)


def replace_files(table: Table, old: list[DataFile], new: list[DataFile]) -> bool:
    """One snapshot replacing `old` by `new`, committed onto the snapshot `table` holds; when
    a scoring run committed meanwhile, again onto the new head (appends leave `old` alone).
    False when some of `old` are gone from the head (another maintenance run replaced them)."""
    for _attempt in range(COMMIT_ATTEMPTS):
        try:
            with table.transaction() as transaction:
                if mapping := name_mapping(table):  # compacted files have no field ids
                    transaction.set_properties(mapping)
                update = transaction.update_snapshot(maintenance_properties(table, COMPACT))
                with update.overwrite() as overwrite:
                    for data_file in old:
                        overwrite.delete_data_file(data_file)
                    for data_file in new:
                        overwrite.append_data_file(data_file)
            return True
        except CommitFailedException:
            table.refresh()
        except ValidationException:
            table.refresh()
            return False
    raise MaintenanceError(
        f"{table.location()}: {COMMIT_ATTEMPTS} compaction commits in a row lost to concurrent "
        "writers; run 'fiqa maintain' again later"
    )


# Expiry


def expire(
    table: Table,
    plan: MaintenancePlan,
    summary: MaintenanceSummary,
    progress: Callable[[str], None],
) -> set[int]:
    """Expire what `plan` lets go, carrying sources forward first; returns the ids expired
    (in a dry run: to be expired)."""
    total = len(table.snapshots())
    for _attempt in range(COMMIT_ATTEMPTS):
        expiring = expirable(table, plan)
        carry = {d: s for d, s in source_snapshots(table).items() if s.snapshot_id in expiring}
        summary.sources_carried = sorted(carry)
        if plan.dry_run or not expiring:
            break
        try:
            for dataset, snapshot in sorted(carry.items()):
                source = {"fiqa.dataset": dataset, "fiqa.source": snapshot.summary["fiqa.source"]}
                append_files(table, [], {**maintenance_properties(table, SOURCES), **source})
            total = len(table.snapshots())
            expiring = expirable(table, plan) - {
                s.snapshot_id for s in source_snapshots(table).values()
            }
            if expiring:
                oldest = min(
                    (s for s in table.snapshots() if s.snapshot_id not in expiring),
                    key=lambda s: s.timestamp_ms,
                )
                with table.transaction() as transaction:
                    ExpireSnapshots(transaction).by_ids(sorted(expiring)).commit()
                    transaction.set_properties({EXPIRED_BEFORE: snapshot_time(oldest)})
            break
        except CommitFailedException:
            table.refresh()
    else:
        raise MaintenanceError(
            f"{table.location()}: {COMMIT_ATTEMPTS} expiry commits in a row lost to concurrent "
            "writers; run 'fiqa maintain' again later"
        )
    summary.snapshots_expired = len(expiring)
    verb = "would expire" if plan.dry_run else "expired"
    line = f"expire: {verb} {len(expiring)} of {total} snapshots"
    if summary.sources_carried:
        line += f"; the sources of {', '.join(summary.sources_carried)} carried forward"
    progress(line)
    return expiring


def expirable(table: Table, plan: MaintenancePlan) -> set[int]:
    """Snapshots beyond the newest `keep_last` and older than `expire_before`, never one a
    branch or tag (the current snapshot among them) points at: what stays is the newest."""
    if plan.expire_before is None:
        return set()
    cutoff = plan.expire_before.timestamp() * 1000
    newest = sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    kept = {s.snapshot_id for s in newest[: plan.keep_last]}
    kept |= {ref.snapshot_id for ref in table.metadata.refs.values()}
    return {s.snapshot_id for s in newest if s.snapshot_id not in kept and s.timestamp_ms < cutoff}


def source_snapshots(table: Table) -> dict[str, Snapshot]:
    """Per dataset, the newest snapshot recording its source (what `dataset_sources` reads)."""
    newest: dict[str, Snapshot] = {}
    for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        dataset = snapshot.summary.get("fiqa.dataset")
        if dataset and snapshot.summary.get("fiqa.source") and dataset not in newest:
            newest[dataset] = snapshot
    return newest


def maintenance_properties(table: Table, kind: str) -> dict[str, str]:
    """The summary of a maintenance snapshot committed onto the table's current one."""
    return {MAINTENANCE: kind, ROWS_OF: str(rows_version(table.current_snapshot()))}


def rows_version(snapshot: Snapshot) -> int:
    """The id of the newest snapshot up to `snapshot` that changed rows."""
    return int(snapshot.summary.get(ROWS_OF) or snapshot.snapshot_id)


def same_rows(table: Table, snapshot_id: int) -> bool:
    """Whether the table's current snapshot holds the rows snapshot `snapshot_id` held: only
    maintenance was committed since. An expired `snapshot_id` is taken to have changed rows
    itself, so an expired maintenance snapshot counts as different (the safe answer)."""
    current, then = table.current_snapshot(), table.snapshot_by_id(snapshot_id)
    if current is None:
        return False
    return rows_version(current) == (rows_version(then) if then else snapshot_id)


# Orphans


def remove_orphans(
    table: Table,
    retained: list[Snapshot],
    plan: MaintenancePlan,
    storage: StorageOptions | None,
    summary: MaintenanceSummary,
    progress: Callable[[str], None],
) -> None:
    """Delete the files under the table that nothing retained references, unless young."""
    referenced = referenced_files(table, retained)
    young = datetime.datetime.now(datetime.UTC) - plan.orphan_age
    for fs, info in table_files(table, storage):
        if info.path in referenced:
            continue
        if info.mtime is None or info.mtime > young:  # maybe a file of a run still writing
            summary.orphans_young += 1
            continue
        if not plan.dry_run:
            fs.delete_file(info.path)
        summary.orphans_removed += 1
        summary.orphan_bytes += info.size
    progress(
        f"orphans: {'would remove' if plan.dry_run else 'removed'} {summary.orphans_removed} "
        f"unreferenced files ({summary.orphan_bytes / MiB:.1f} MiB); kept "
        f"{summary.orphans_young} younger than {plan.orphan_age.total_seconds() / 3600:g} hours"
    )


def referenced_files(table: Table, snapshots: list[Snapshot]) -> set[str]:
    """Storage paths (no scheme) of every file the table's metadata and `snapshots` need:
    metadata files, manifest lists, manifests and the data files live in them."""
    metadata = table.metadata
    paths = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    paths.update(s.statistics_path for s in (*metadata.statistics, *metadata.partition_statistics))
    manifests: set[str] = set()
    for snapshot in snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in manifests:
                continue
            manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                paths.add(entry.data_file.file_path)
    return {parse_uri(p).path for p in paths | manifests}


def table_files(
    table: Table, storage: StorageOptions | None
) -> Iterator[tuple[pafs.FileSystem, pafs.FileInfo]]:
    """Every file under the table's data and metadata folders, listed through our storage."""
    provider = table.location_provider()
    seen: set[str] = set()
    for root in (provider.data_path, provider.metadata_path):
        fs, inner = arrow_filesystem(root, storage)
        selector = pafs.FileSelector(inner, recursive=True, allow_not_found=True)
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path not in seen:
                seen.add(info.path)
                yield fs, info
