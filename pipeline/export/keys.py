"""`--to list` and `--to parquet`: the kept keys as one file, or with `--with-bytes` the
keys and the image bytes as Parquet parts.

`list` is text: a header line `dataset<TAB>image_id<TAB>identity`, then one line per kept
image (an unknown identity is empty). `parquet` has the columns dataset, image_id, identity;
the file's metadata key `fiqa.export` holds the summary. Each group of kept keys
(`kept.py`) is written as a piece (lines, or Parquet) by its own task; the driver then joins
the pieces in order into the file, copying bytes or row groups, and the file appears under
its name only once written whole.

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
import shutil
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.export.base import (
    PARTIAL,
    ExportError,
    ExportPlan,
    ExportSummary,
    summary_for,
)
from pipeline.export.kept import Group, Kept, for_each_group, plan_groups
from pipeline.export.samples import Output, export_outputs, samples
from pipeline.shuffle import Part
from pipeline.storage import StorageOptions, arrow_filesystem, committed, filesystem

LIST_COLUMNS = ("dataset", "image_id", "identity")
METADATA_KEY = b"fiqa.export"
PART_PATTERN = "part-{:06d}.parquet"
KEYS_SCHEMA = pa.schema([(c, pa.string()) for c in LIST_COLUMNS])
SCHEMA = pa.schema([*KEYS_SCHEMA, ("image", pa.binary())])
ROW_GROUP_BYTES = 64 << 20  # image bytes a part task holds before it writes a row group
COPY_BYTES = 8 << 20  # of a list piece, copied into the file at once


def _piece(
    group: Group, rows: pa.Table, text: bool, folder: str, storage: StorageOptions | None
) -> tuple[int, Part, str | None]:
    """The group's keys as a piece: list lines (`text`) or Parquet; and a value that a list
    line cannot hold, if any."""
    rows = rows.select(list(LIST_COLUMNS)).cast(KEYS_SCHEMA)
    unlistable = None
    for name in LIST_COLUMNS:
        bad = pc.match_substring_regex(rows[name].fill_null(""), "[\t\r\n]")
        if pc.any(bad).as_py():
            unlistable = f"{name} {rows[name].filter(bad)[0].as_py()!r}"
            break
    uri = posixpath.join(folder, f"keys-{group.number:06d}.{'txt' if text else 'parquet'}")
    fs, path = arrow_filesystem(uri, storage)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        if text and unlistable is None:  # an unknown identity is an empty field
            options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
            pacsv.write_csv(rows, out, options)
        elif not text:
            pq.write_table(rows, out)
    return group.number, Part(uri), unlistable


def _pieces(
    kept: Kept, text: bool, folder: str, storage, progress
) -> list[tuple[int, Part, str | None]]:
    pieces: list[tuple[int, Part, str | None]] = []
    work = (text, folder, storage)
    for_each_group(
        kept, plan_groups(kept.shards), _piece, work, pieces.append, folder, storage, progress
    )
    return sorted(pieces, key=lambda p: p[0])


def export_list(kept: Kept, plan: ExportPlan, folder: str, progress=print) -> ExportSummary:
    pieces = _pieces(kept, True, folder, plan.storage, progress)
    for _, _, unlistable in pieces:
        if unlistable:
            raise ExportError(f"{unlistable} holds a tab or line break; use --to parquet")
    summary = summary_for(kept, plan)
    summary.images, summary.files = kept.total, [plan.out]
    if plan.dry_run:
        return summary
    fs, path = filesystem(plan.out, plan.storage)
    with committed(fs, path) as f:
        f.write(("\t".join(LIST_COLUMNS) + "\n").encode())
        for _, part, _ in pieces:
            source, inner = filesystem(part.path, plan.storage)
            with source.open(inner, "rb") as piece:
                shutil.copyfileobj(piece, f, COPY_BYTES)
    return summary


def export_parquet(kept: Kept, plan: ExportPlan, folder: str, progress=print) -> ExportSummary:
    if plan.with_bytes:
        return export_outputs(kept, plan, _write_part, PART_PATTERN, "parts", folder, progress)
    pieces = _pieces(kept, False, folder, plan.storage, progress)
    summary = summary_for(kept, plan)
    summary.images, summary.files = kept.total, [plan.out]
    if plan.dry_run:
        return summary
    schema = KEYS_SCHEMA.with_metadata(
        {METADATA_KEY: json.dumps(summary.to_dict(), sort_keys=True)}
    )
    fs, path = filesystem(plan.out, plan.storage)
    with committed(fs, path) as f, pq.ParquetWriter(f, schema) as writer:
        for _, part, _ in pieces:
            for batch in _batches(part, plan.storage):
                writer.write_batch(batch)
    return summary


def _batches(part: Part, storage: StorageOptions | None) -> Iterator[pa.RecordBatch]:
    fs, path = arrow_filesystem(part.path, storage)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches()


def _write_part(
    output: Output, out: str, storage: StorageOptions | None, listed: dict, sources: dict
) -> tuple[int, list[tuple[int, dict]]]:
    fs, root = filesystem(out, storage)
    path, partial = posixpath.join(root, output.name), posixpath.join(root, PARTIAL, output.name)
    problems: list[tuple[int, dict]] = []
    rows, held, count = [], 0, 0
    with committed(fs, path, partial) as f, pq.ParquetWriter(f, SCHEMA) as writer:
        for _, s in samples(output, listed, sources, storage, problems):
            rows.append(s)
            held += len(s["image"])
            if held >= ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                count, rows, held = count + len(rows), [], 0
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            count += len(rows)
    return count, problems
