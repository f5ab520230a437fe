"""What a dataset holds: shards, images, identities, statuses and image sizes.

Runs as a Ray Data pipeline: read tasks stream the shards, a CPU map reads only each image's
header (no pixel decoding) and drops the bytes, and the driver folds the small rows into
counters.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import PIL.Image

from pipeline.datasource import ShardDatasource, read_shards
from pipeline.status import OK
from pipeline.storage import StorageOptions

SIZE_BUCKETS = ("112x112", "<64", "64-111", "112-255", "256-511", ">=512")


def size_bucket(width: int, height: int) -> str:
    """The histogram bin of an image: aligned 112x112 crops, else by the longer side."""
    if (width, height) == (112, 112):
        return "112x112"
    side = max(width, height)
    for upper, name in ((64, "<64"), (112, "64-111"), (256, "112-255"), (512, "256-511")):
        if side < upper:
            return name
    return ">=512"


def header_sizes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Width and height from each image's header; the bytes are dropped."""
    widths, heights = [], []
    for image, status in zip(batch["image"], batch["status"], strict=True):
        width = height = -1
        if status == OK:
            # An unreadable header is decoding's business (it records why), not ours.
            with contextlib.suppress(Exception):
                width, height = PIL.Image.open(io.BytesIO(image)).size
        widths.append(width)
        heights.append(height)
    return {
        "image_id": batch["image_id"],
        "shard": batch["shard"],
        "identity": batch["identity"],
        "status": batch["status"],
        "width": np.array(widths, np.int32),
        "height": np.array(heights, np.int32),
    }


@dataclass
class DatasetSummary:
    uri: str
    format: str
    shards: int = 0
    shard_errors: int = 0  # shards that broke part-way (their rows up to the break count)
    images: int = 0
    identities: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_dataset(
    format_name: str,
    uri: str,
    *,
    storage: StorageOptions | None = None,
    format_options: dict | None = None,
    show: int = 0,
) -> DatasetSummary:
    source = ShardDatasource(format_name, uri, storage=storage, format_options=format_options)
    summary = DatasetSummary(uri=uri, format=format_name, shards=len(source.shards))
    identities: set[str] = set()
    statuses, sizes = Counter(), Counter()
    rows = read_shards(source).map_batches(header_sizes, batch_format="numpy")
    for batch in rows.iter_batches(batch_format="numpy", batch_size=4096):
        shard_level = batch["image_id"] == batch["shard"]
        summary.shard_errors += int(shard_level.sum())
        statuses.update(batch["status"][~shard_level].tolist())
        identities.update(i for i in batch["identity"].tolist() if i is not None)
        for width, height in zip(batch["width"], batch["height"], strict=True):
            if width >= 0:
                sizes[size_bucket(int(width), int(height))] += 1
        for i in range(min(show - len(summary.examples), len(batch["image_id"]))):
            summary.examples.append({k: _plain(batch[k][i]) for k in batch})
    summary.images = sum(statuses.values())
    summary.identities = len(identities)
    summary.statuses = dict(sorted(statuses.items()))
    summary.sizes = {name: sizes[name] for name in SIZE_BUCKETS if sizes[name]}
    return summary


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
