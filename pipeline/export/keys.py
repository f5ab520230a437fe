"""`--to list` and `--to parquet`: the kept keys as one file, or with `--with-bytes` the
keys and the image bytes as Parquet parts.

`list` is text: a header line `dataset<TAB>image_id<TAB>identity`, then one line per kept
image (an unknown identity is empty). `parquet` has the columns dataset, image_id, identity;
the file's metadata key `fiqa.export` holds the summary. Both hold nothing but the
selection's keys, so the driver writes them, and they appear under their name only once
written whole.

`parquet --with-bytes` adds the column `image` and holds the training set itself, so it is
planned like `--to wds` (`samples.py`): `--out` is a new folder of parts `part-000000.parquet`,
... of at most `--shard-size` rows, balanced, each written by one Ray task straight from its
source slices under `_partial/` and moved into place when whole. Images that cannot be read
are left out of their part, which comes out smaller, and reported; `_export.json`, written
last as for every folder export, records the parts with their counts and the problems.
Everything is in export order.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.export.base import (
    PARTIAL,
    ExportError,
    ExportPlan,
    ExportSummary,
    Kept,
    committed,
    summary_for,
    write_lines,
)
from pipeline.export.samples import Output, export_outputs, samples
from pipeline.storage import StorageOptions, filesystem

LIST_COLUMNS = ("dataset", "image_id", "identity")
METADATA_KEY = b"fiqa.export"
PART_PATTERN = "part-{:06d}.parquet"
SCHEMA = pa.schema([*((c, pa.string()) for c in LIST_COLUMNS), ("image", pa.binary())])
ROW_GROUP_BYTES = 64 << 20  # image bytes a part task holds before it writes a row group


def export_list(kept: Kept, plan: ExportPlan, progress=print) -> ExportSummary:
    rows = kept.rows.select(list(LIST_COLUMNS))
    for name in LIST_COLUMNS:
        bad = pc.match_substring_regex(rows[name].fill_null(""), "[\t\r\n]")
        if pc.any(bad).as_py():
            value = rows[name].filter(bad)[0].as_py()
            raise ExportError(f"{name} {value!r} holds a tab or line break; use --to parquet")
    fs, path = filesystem(plan.out, plan.storage)
    columns = [rows[name].fill_null("").to_pylist() for name in LIST_COLUMNS]
    with committed(fs, path) as f:
        write_lines(f, ["\t".join(LIST_COLUMNS) + "\n"])
        write_lines(f, ("\t".join(line) + "\n" for line in zip(*columns, strict=True)))
    summary = summary_for(kept, plan)
    summary.images, summary.files = rows.num_rows, [plan.out]
    return summary


def export_parquet(kept: Kept, plan: ExportPlan, progress=print) -> ExportSummary:
    if plan.with_bytes:
        return export_outputs(kept, plan, _write_part, PART_PATTERN, "parts", progress)
    summary = summary_for(kept, plan)
    summary.images, summary.files = kept.rows.num_rows, [plan.out]
    schema = pa.schema([(c, pa.string()) for c in LIST_COLUMNS])
    schema = schema.with_metadata({METADATA_KEY: json.dumps(summary.to_dict(), sort_keys=True)})
    fs, path = filesystem(plan.out, plan.storage)
    with committed(fs, path) as f:
        pq.write_table(kept.rows.select(list(LIST_COLUMNS)).cast(schema), f)
    return summary


@ray.remote
def _write_part(
    output: Output, out: str, storage: StorageOptions | None
) -> tuple[int, list[tuple[int, dict]]]:
    fs, root = filesystem(out, storage)
    path, partial = posixpath.join(root, output.name), posixpath.join(root, PARTIAL, output.name)
    problems: list[tuple[int, dict]] = []
    rows, held, count = [], 0, 0
    with committed(fs, path, partial) as f, pq.ParquetWriter(f, SCHEMA) as writer:
        for _, s in samples(output, storage, problems):
            rows.append(s)
            held += len(s["image"])
            if held >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                count, rows, held = count + len(rows), [], 0
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            count += len(rows)
    return count, problems
