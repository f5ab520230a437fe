"""What every export target shares: the plan, the kept images in export order, problem rows,
the summary (which is also the completion record) and committed writes."""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog

from pipeline.catalog import CatalogConfig
from pipeline.selection import Selection, load_selection
from pipeline.storage import StorageOptions

RECORD = "_export.json"  # the completion record of a folder export, written last
PARTIAL = "_partial"  # where a folder export's shards are written before they move into place
KEY_COLUMNS = ("dataset", "image_id", "shard", "identity")
MISSING, UNREADABLE, UNSUPPORTED = "missing", "unreadable", "unsupported"
_DIGITS = re.compile(r"([0-9]+)")
_LINES_PER_WRITE = 1 << 16


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportPlan:
    selection: str  # full table name
    target: str
    out: str
    dataset: str | None = None  # None: every dataset with kept images
    shard_size: int = 1000  # wds, parquet with bytes: images per shard (part) at most
    with_bytes: bool = False  # parquet
    storage: StorageOptions | None = None
    catalog: CatalogConfig | None = None


@dataclass(frozen=True)
class Kept:
    """The kept images of the chosen datasets, in export order."""

    selection: Selection
    datasets: list[str]
    rows: pa.Table  # KEY_COLUMNS


@dataclass
class ExportSummary:
    target: str
    out: str
    selection: str
    snapshot_id: int
    kept: int  # images the selection keeps of the exported datasets
    sources: dict[str, dict]
    images: int = 0  # images written
    files: list[str] = field(default_factory=list)  # what the export consists of, under out
    # wds shards, parquet parts: {"name", "first" (position), "planned", "images"} in order
    shards: list[dict] = field(default_factory=list)
    format_options: dict = field(default_factory=dict)  # rec-idx: how to read the export
    problems: list[dict] = field(default_factory=list)  # kept images that were not written

    def problem_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p["problem"] for p in self.problems).items()))

    def to_dict(self) -> dict:
        return {**asdict(self), "problem_counts": self.problem_counts()}


def problem(dataset: str, image_id: str, shard: str, kind: str, message: str) -> dict:
    return {
        "dataset": dataset,
        "image_id": image_id,
        "shard": shard,
        "problem": kind,
        "message": message,
    }


def natural_key(text: str | None) -> tuple:
    """Sort key comparing digit runs as numbers, so `train.rec#9` precedes `train.rec#10`
    as it does in the source; the text itself breaks ties such as `a01` and `a1`."""
    parts = _DIGITS.split(text or "")
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text or "")


def load_kept(catalog: Catalog, name: str) -> Selection:
    """Selection `name` with only what an export reads: the key columns of the kept rows."""
    return load_selection(catalog, name, kept_only=True, columns=KEY_COLUMNS)


def kept_images(selection: Selection, dataset: str | None) -> Kept:
    """The kept rows of `dataset` (or of every dataset) in (dataset, shard, image_id) order;
    `selection` as `load_kept` reads it."""
    rows = selection.rows
    present = sorted(selection.info["summary"]["datasets"])
    if dataset is not None:
        if dataset not in present:
            raise ExportError(
                f"{selection.name} has no dataset {dataset!r}; it holds {', '.join(present)}"
            )
        rows = rows.filter(pc.equal(rows["dataset"], dataset))
    if rows.num_rows == 0:
        what = f" of {dataset}" if dataset else ""
        raise ExportError(f"{selection.name} keeps no images{what}: nothing to export")
    columns = [rows[c].to_pylist() for c in ("dataset", "shard", "image_id")]
    order = sorted(
        range(rows.num_rows),
        key=lambda i: (columns[0][i], natural_key(columns[1][i]), natural_key(columns[2][i])),
    )
    rows = rows.take(pa.array(order, pa.int64()))
    return Kept(selection, sorted(pc.unique(rows["dataset"]).to_pylist()), rows)


def summary_for(kept: Kept, plan: ExportPlan) -> ExportSummary:
    # The recorded sources, as far as there are any: keys alone need none.
    sources = kept.selection.info.get("sources", {})
    return ExportSummary(
        target=plan.target,
        out=plan.out,
        selection=kept.selection.name,
        snapshot_id=kept.selection.snapshot_id,
        kept=kept.rows.num_rows,
        sources={d: sources[d] for d in kept.datasets if d in sources},
    )


def require_empty(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> None:
    """Folder exports go to a new place, so that no earlier file mixes into this one."""
    if fs.exists(root) and fs.ls(root):
        raise ExportError(f"--out {uri} is not empty; export to a new folder (or remove it)")


@contextlib.contextmanager
def committed(
    fs: fsspec.AbstractFileSystem, path: str, partial: str | None = None
) -> Iterator[BinaryIO]:
    """A file open for writing under a temporary name (`partial`, or one beside `path`), moved
    to `path` once whole: a reader never sees half a file, and a failed write leaves nothing
    under `path`."""
    partial = partial or f"{path}.{uuid.uuid4().hex[:8]}.partial"
    for parent in {posixpath.dirname(path), posixpath.dirname(partial)} - {""}:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(partial, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(partial)
        raise
    fs.mv(partial, path)


def write_lines(out: BinaryIO, lines: Iterable[str]) -> None:
    """Writes in blocks: one write call per line costs more than formatting the line."""
    lines = iter(lines)
    while block := list(islice(lines, _LINES_PER_WRITE)):
        out.write("".join(block).encode())


def write_record(fs: fsspec.AbstractFileSystem, root: str, summary: ExportSummary) -> str:
    path = posixpath.join(root, RECORD)
    with committed(fs, path) as f:
        f.write(json.dumps(summary.to_dict(), indent=1, sort_keys=True).encode())
    return path


def every(total: int, parts: int = 20) -> int:
    """Report progress each this many items: about `parts` lines however long the work."""
    return max(1, total // parts)
