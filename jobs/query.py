"""`fiqa query`: read-only SQL (DuckDB) over a manifest snapshot and its selections."""

from __future__ import annotations

import datetime
import io
import json
import sys
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from jobs.config import TableConfig, configure_verb
from pipeline.catalog import open_catalog
from pipeline.query import open_query
from pipeline.storage import filesystem

EXAMPLES = """\
examples:
  # quality quantiles per dataset and model
  fiqa query "SELECT dataset, model_id, count(*) AS images,
      quantile_cont(quality, [0.1, 0.5, 0.9]) AS q10_50_90
    FROM manifest WHERE status = 'ok' GROUP BY ALL ORDER BY ALL"

  # the 20 identities with the lowest median quality under one model
  fiqa query "SELECT dataset, identity, count(*) AS images, median(quality) AS median
    FROM manifest WHERE status = 'ok' AND model_id = '0123456789ab'
    GROUP BY ALL ORDER BY median LIMIT 20"

  # errors by status
  fiqa query "SELECT dataset, model_id, status, count(*) AS images FROM manifest
    GROUP BY ALL ORDER BY images DESC" --format csv

  # how many images a threshold of 0.3 keeps, per dataset and model
  fiqa query "SELECT dataset, model_id, count(*) FILTER (quality >= 0.3) AS kept,
      count(*) AS images FROM manifest GROUP BY ALL"

  # what a selection (written by 'fiqa filter --out clean') dropped, by reason
  fiqa query "SELECT reason, count(*) FROM clean GROUP BY reason"

  # the manifest as it was yesterday, to a Parquet file
  fiqa query "SELECT * FROM manifest WHERE quality < 0.1" --as-of 2026-11-30T00:00:00 \\
    --format parquet --out worst.parquet

Only single SELECT statements run: anything that writes, copies out, attaches, installs or
loads, or reads files other than the exposed tables (read_csv, read_text, ...) is refused."""


class QueryConfig(TableConfig):
    sql: str = Field(description="one SELECT statement", json_schema_extra={"positional": True})
    snapshot: int | None = Field(None, description="read this manifest snapshot id")
    as_of: datetime.datetime | None = Field(
        None, description="read the manifest snapshot current at this time (ISO 8601; UTC)"
    )
    format: Literal["table", "csv", "json", "parquet"] = Field(
        "table", description="output format (json: one object per line)"
    )
    out: str | None = Field(None, description="write the result here (default: stdout)")

    @model_validator(mode="after")
    def one_snapshot_choice(self) -> QueryConfig:
        if self.snapshot is not None and self.as_of is not None:
            raise ValueError("give --snapshot or --as-of, not both")
        if self.format == "parquet" and not self.out:
            raise ValueError("--format parquet needs --out")
        return self


def render(result: pa.Table, fmt: str) -> bytes:
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(result, sink)
        return sink.getvalue()
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(_printable(result), sink)
        return sink.getvalue()
    if fmt == "json":
        lines = (json.dumps(row, default=_json_value) for row in result.to_pylist())
        return "".join(line + "\n" for line in lines).encode()
    return (text_table(result) + "\n").encode()


def _printable(result: pa.Table) -> pa.Table:
    """Binary columns (embeddings) as hex text and nested ones (lists, structs) as JSON
    text: CSV has neither bytes nor nesting."""

    def text(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
        if pa.types.is_binary(col.type):
            return pa.array([None if v is None else v.hex() for v in col.to_pylist()], pa.string())
        if pa.types.is_nested(col.type):
            values = col.to_pylist()
            return pa.array([None if v is None else json.dumps(v, default=str) for v in values])
        return col

    return pa.table([text(col) for col in result.columns], names=result.column_names)


def _json_value(value):
    return value.hex() if isinstance(value, bytes) else str(value)


def text_table(result: pa.Table) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        return "NULL" if value is None else str(value)

    rows = [[cell(v) for v in row.values()] for row in result.to_pylist()]
    header = result.column_names
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [header, ["-" * w for w in widths], *rows]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def run(config: QueryConfig) -> None:
    storage = config.storage()
    query = open_query(
        open_catalog(config.catalog, storage),
        config.table,
        snapshot_id=config.snapshot,
        as_of=config.as_of,
        storage=storage,
    )
    try:
        result = query.sql(config.sql)
    finally:
        query.close()
    data = render(result, config.format)
    if config.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    fs, path = filesystem(config.out, storage)
    with fs.open(path, "wb") as f:
        f.write(data)
    print(f"{result.num_rows} rows from snapshot {query.snapshot_id} written to {config.out}")


def configure(parser) -> None:
    configure_verb(
        parser,
        QueryConfig,
        run,
        example='fiqa query "SELECT status, count(*) FROM manifest GROUP BY status"',
    )
    parser.epilog = EXAMPLES
