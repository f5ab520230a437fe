"""Thumbnails of the report's example images, fetched from where each dataset's images are.

Only the shards holding the chosen images are read (`fetch_images`). An image that cannot be
fetched or decoded gets no file: the page shows a placeholder and counts it, and the report
is still written.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from pipeline.datasource import fetch_images
from pipeline.decode import DecodeOptions, decode_image
from pipeline.status import OK
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)

SIZE = 96
FOLDER = "thumbs"
_DECODE = DecodeOptions(size=SIZE)


@dataclass(frozen=True)
class Thumbnail:
    row: dict  # grp, dataset, image_id, shard, identity, quality, model_id, reason
    file: str | None  # path inside the report, None when the image could not be shown


def thumbnails(
    rows: Sequence[dict],
    sources: dict[str, dict],
    storage: StorageOptions | None,
    write: Callable[[str, bytes], None],
) -> list[Thumbnail]:
    """One Thumbnail per row; `write(path, bytes)` stores a JPEG in the report."""
    found = _fetch(rows, sources, storage)
    out = []
    for number, row in enumerate(rows):
        jpeg = _jpeg(found.get((row["dataset"], row["image_id"])))
        name = None
        if jpeg is not None:
            name = f"{FOLDER}/{number:03d}.jpg"
            write(name, jpeg)
        out.append(Thumbnail(row, name))
    return out


def _fetch(
    rows: Sequence[dict], sources: dict[str, dict], storage: StorageOptions | None
) -> dict[tuple[str, str], bytes]:
    wanted: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        wanted[row["dataset"]][row["shard"]].add(row["image_id"])
    found = {}
    for dataset, shards in wanted.items():
        source = sources.get(dataset)
        if source is None:
            log.warning("no source recorded for dataset %s: its thumbnails are left out", dataset)
            continue
        try:
            images = fetch_images(
                source["format"],
                source.get("format_options") or {},
                source["data"],
                storage,
                shards,
            )
        except (
            Exception
        ) as e:  # storage, listing or format trouble costs thumbnails, not the report
            log.warning("cannot fetch thumbnails of %s from %s: %s", dataset, source["data"], e)
            continue
        found.update({(dataset, image_id): data for image_id, data in images.items()})
    return found


def _jpeg(data: bytes | None) -> bytes | None:
    if data is None:
        return None
    decoded = decode_image(data, _DECODE)
    if decoded.status != OK:
        return None
    buffer = io.BytesIO()
    Image.fromarray(decoded.pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
