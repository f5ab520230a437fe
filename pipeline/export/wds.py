"""`--to wds`: the kept samples rewritten into balanced WebDataset shards.

The K kept images are planned into n = ceil(K / shard_size) shards `shard-000000.tar`, ...
of sizes differing by at most one, in export order (`samples.py`). A sample's key is its
kept row's planned position in the export (`000000042`), so keys are unique and ordered
across shards, and a kept image that cannot be written leaves a gap in the keys and makes
its shard one smaller rather than renumbering everything after it. `<key>.json` holds
`identity`, `dataset` and the source `image_id`. One Ray task per shard streams its
samples from the sources into the tar under `_partial/` and moves it into place when
complete; the completion record `_export.json` (each shard's planned and actual count, the
selection snapshot, every kept image that was not written and why) comes last.
"""

from __future__ import annotations

import posixpath
import tarfile

from pipeline.export.base import PARTIAL, ExportPlan, ExportSummary
from pipeline.export.kept import Kept
from pipeline.export.samples import Output, export_outputs, samples
from pipeline.formats.wds import SHARD_PATTERN, WdsWriter
from pipeline.storage import StorageOptions, filesystem


def _write_shard(
    output: Output, out: str, storage: StorageOptions | None, listed: dict, sources: dict
) -> tuple[int, list[tuple[int, dict]]]:
    fs, root = filesystem(out, storage)
    staging = posixpath.join(root, PARTIAL, output.name)  # WdsWriter names its one tar
    problems: list[tuple[int, dict]] = []
    with WdsWriter(fs, staging, max(1, output.planned)) as writer:
        for position, s in samples(
            output, listed, sources, storage, problems, name_extensions=True
        ):
            meta = {"dataset": s["dataset"], "image_id": s["image_id"]}
            writer.write(f"{position:09d}", s["identity"], s["image"], s["ext"], meta)
    staged = posixpath.join(staging, SHARD_PATTERN.format(0))
    if writer.count == 0:  # every image of it failed: still a shard, so the names run on
        with fs.open(staged, "wb") as f:
            tarfile.open(fileobj=f, mode="w").close()
    fs.mv(staged, posixpath.join(root, output.name))
    return writer.count, problems


def export_wds(kept: Kept, plan: ExportPlan, folder: str, progress=print) -> ExportSummary:
    return export_outputs(kept, plan, _write_shard, SHARD_PATTERN, "shards", folder, progress)
