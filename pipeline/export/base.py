"""What every export target shares: the settings and the plan, problem rows, the summary (which
is also the completion record) and export order."""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import fsspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# The names of the targets (TARGETS in the package), as a type for settings.
ExportTarget = Literal["rec-idx", "wds", "list", "parquet"]


class ExportOptions(BaseModel):
    """How the kept images are written, each option declared once: the plan and the settings
    of the jobs (`fiqa export`, a curation's `export` entry) inherit these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = Field(
        description="output URI: a new folder for rec-idx, wds and parquet --with-bytes, "
        "a file for list and parquet"
    )
    dataset: str | None = Field(
        None, description="export this dataset only (required for rec-idx when there are more)"
    )
    shard_size: int = Field(
        1000, gt=0, description="wds, parquet --with-bytes: images per shard (part) at most"
    )
    with_bytes: bool = Field(False, description="parquet: also the image bytes")


class ExportPlan(ExportOptions):
    """An export to make. Its target may be any name: `export` refuses one it does not know."""

    selection: str  # full table name
    target: str
    dry_run: bool = False  # plan only: read no image, write nothing
    storage: StorageOptions | None = None
    catalog: CatalogConfig | None = None


class ExportSettings(ExportOptions):
    """The options and the target, as a job sets them: checked before any work starts."""

    to: ExportTarget = Field(description="what to write")

    @model_validator(mode="after")
    def bytes_need_parquet(self) -> ExportSettings:
        if self.with_bytes and self.to != "parquet":
            raise ValueError("with_bytes (--with-bytes) applies to --to parquet only")
        return self

    def export_plan(
        self,
        selection: str,
        storage: StorageOptions | None,
        catalog: CatalogConfig | None,
        dry_run: bool = False,
    ) -> ExportPlan:
        """An export of `selection` (a full table name) with these settings."""
        return ExportPlan(
            selection=selection,
            target=self.to,
            dry_run=dry_run,
            storage=storage,
            catalog=catalog,
            **self.model_dump(include=set(ExportOptions.model_fields)),
        )


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
