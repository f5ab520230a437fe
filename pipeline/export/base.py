"""What every export target shares: the plan, problem rows, the summary (which is also the
completion record) and export order."""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import fsspec

from pipeline.catalog import CatalogConfig
from pipeline.errors import FiqaError
from pipeline.storage import StorageOptions, committed

if TYPE_CHECKING:
    from pipeline.export.kept import Kept

RECORD = "_export.json"  # the completion record of a folder export, written last
PARTIAL = "_partial"  # where a folder export's shards are written before they move into place
MISSING, UNREADABLE, UNSUPPORTED = "missing", "unreadable", "unsupported"
_DIGITS = re.compile(r"([0-9]+)")


class ExportError(FiqaError, ValueError):
    """An export that cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportPlan:
    selection: str  # full table name
    target: str
    out: str
    dataset: str | None = None  # None: every dataset with kept images
    shard_size: int = 1000  # wds, parquet with bytes: images per shard (part) at most
    with_bytes: bool = False  # parquet
    dry_run: bool = False  # plan only: read no image, write nothing
    storage: StorageOptions | None = None
    catalog: CatalogConfig | None = None


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


def summary_for(kept: Kept, plan: ExportPlan) -> ExportSummary:
    # The recorded sources, as far as there are any: keys alone need none.
    sources = kept.info.get("sources", {})
    return ExportSummary(
        target=plan.target,
        out=plan.out,
        selection=kept.name,
        snapshot_id=kept.snapshot_id,
        kept=kept.total,
        sources={d: sources[d] for d in kept.datasets if d in sources},
    )


def require_empty(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> None:
    """Folder exports go to a new place, so that no earlier file mixes into this one."""
    if fs.exists(root) and fs.ls(root):
        raise ExportError(f"--out {uri} is not empty; export to a new folder (or remove it)")


def write_record(fs: fsspec.AbstractFileSystem, root: str, summary: ExportSummary) -> str:
    path = posixpath.join(root, RECORD)
    with committed(fs, path) as f:
        f.write(json.dumps(summary.to_dict(), indent=1, sort_keys=True).encode())
    return path
