"""`fiqa export`: a selection's kept images as a training set.

Targets: `rec-idx` (a new `train.idx` into an insightface `.rec`, `rec_idx.py`), `wds`
(WebDataset shards with the bytes copied, `wds.py`), `list` and `parquet` (the kept keys,
or with the bytes as Parquet parts, `keys.py`). The kept keys come in groups of consecutive
positions, each sorted by a task of its own (`kept.py`), so no process holds them all. The
targets that copy bytes stream them from the sources in one Ray task per output shard
(`samples.py`), so no stage holds more than one output shard. `dry_run` plans everything
and writes nothing under `out`. Every target exports in the same order, by dataset, shard
and image_id with numbers compared as numbers. A kept image that cannot be delivered is
never dropped silently: it is a problem row (missing, unreadable, unsupported) in the
summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from pipeline.catalog import open_catalog
from pipeline.export.base import (
    ExportError,
    ExportPlan,
    ExportSettings,
    ExportSummary,
    ExportTarget,
)
from pipeline.export.kept import load_kept
from pipeline.export.keys import export_list, export_parquet
from pipeline.export.rec_idx import export_rec_idx
from pipeline.export.wds import export_wds
from pipeline.shuffle import scratch

__all__ = [
    "TARGETS",
    "ExportError",
    "ExportPlan",
    "ExportSettings",
    "ExportSummary",
    "ExportTarget",
    "export",
]

TARGETS: dict[str, Callable[..., ExportSummary]] = {
    "rec-idx": export_rec_idx,
    "wds": export_wds,
    "list": export_list,
    "parquet": export_parquet,
}
assert set(get_args(ExportTarget)) == set(TARGETS)


def export(plan: ExportPlan, progress: Callable[[str], None] = print) -> ExportSummary:
    if plan.target not in TARGETS:
        raise ExportError(f"unknown export target {plan.target!r}; available: {', '.join(TARGETS)}")
    catalog = open_catalog(plan.catalog, plan.storage)
    kept = load_kept(catalog, plan.selection, plan.dataset, plan.storage)
    images = kept.info["summary"]["images"]
    progress(
        f"{kept.name} (snapshot {kept.snapshot_id}, {images} images): "
        f"{'planning' if plan.dry_run else 'exporting'} the {kept.total} kept of "
        f"{', '.join(kept.datasets)}"
    )
    with scratch(kept.location, plan.storage) as folder:
        return TARGETS[plan.target](kept, plan, folder, progress)
