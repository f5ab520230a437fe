"""`fiqa bench query`: a quantile query over a generated manifest, against bare DuckDB."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

QUANTILE_QUERY = (
    "SELECT dataset, count(*) AS images, "
    "quantile_cont(quality, [0.01, 0.1, 0.5, 0.9, 0.99]) AS quantiles "
    "FROM {source} WHERE status = 'ok' GROUP BY dataset ORDER BY dataset"
)


def synthetic_manifest(rows: int, offset: int, datasets: int, seed: int):
    """Manifest rows shaped like a real one (98% ok, 20 images per identity, 1000 per shard),
    fast to make."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.manifest import ARROW_SCHEMA

    rng = np.random.default_rng(seed)
    ids = pa.array(np.arange(offset, offset + rows)).cast(pa.string())
    ok = rng.random(rows) < 0.98
    status = pa.array(np.where(ok, "ok", "decode_error"))
    quality = pa.array(rng.beta(5, 2, rows).astype(np.float32), mask=~ok)
    dataset = pa.array(np.char.add("dataset-", (np.arange(rows) % datasets).astype(str)))
    columns = {
        "dataset": dataset,
        "image_id": ids,
        "shard": pc.binary_join_element_wise(
            "shard-", pa.array(np.arange(offset, offset + rows) // 1000).cast(pa.string()), ""
        ),
        "identity": pa.array(np.arange(offset, offset + rows) // 20).cast(pa.string()),
        "status": status,
        "quality": quality,
        "model_id": pa.array(np.full(rows, "0123456789ab")),
    }
    return pa.table(
        [columns.get(f.name, pa.nulls(rows, f.type)) for f in ARROW_SCHEMA], schema=ARROW_SCHEMA
    )


def bench_query(
    rows: int = 10_000_000,
    *,
    workdir: str,
    datasets: int = 4,
    rows_per_file: int = 2_000_000,
    repeats: int = 5,
    log: Callable[[str], None] = print,
) -> dict:
    """A quantile query per dataset over a `rows`-row manifest: through `fiqa query`'s layer
    (catalog, snapshot planning, sandboxed DuckDB), cold (opening included) and warm, against
    bare DuckDB reading the same Parquet files in the same run."""
    import duckdb
    from pyiceberg.catalog import load_catalog

    from pipeline.manifest import open_table
    from pipeline.query import open_query, sql_literal
    from pipeline.storage import parse_uri

    catalog = load_catalog(
        "bench", type="sql", uri=f"sqlite:///{workdir}/catalog.db", warehouse=f"file://{workdir}"
    )
    table = open_table(catalog, "bench.manifest")
    start = time.perf_counter()
    for offset in range(0, rows, rows_per_file):
        n = min(rows_per_file, rows - offset)
        table.append(synthetic_manifest(n, offset, datasets, seed=offset))
    build = time.perf_counter() - start
    log(f"wrote a {rows:,}-row manifest in {build:.1f} s")
    files = [parse_uri(t.file.file_path).path for t in table.scan().plan_files()]

    def median_time(run: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    def cold() -> None:
        with open_query(catalog, "bench.manifest", selections=()) as q:
            q.sql(QUANTILE_QUERY.format(source="manifest"))

    with open_query(catalog, "bench.manifest", selections=()) as q:
        answer = q.sql(QUANTILE_QUERY.format(source="manifest"))
        warm = median_time(lambda: q.sql(QUANTILE_QUERY.format(source="manifest")))
    cold_s = median_time(cold)
    bare_connection = duckdb.connect()
    listing = ", ".join(map(sql_literal, files))
    bare_sql = QUANTILE_QUERY.format(source=f"read_parquet([{listing}])")
    bare = median_time(lambda: bare_connection.sql(bare_sql).fetchall())
    log(f"quantile query: {cold_s:.3f} s cold, {warm:.3f} s warm, bare DuckDB {bare:.3f} s")
    return {
        "bench": "query",
        "rows": rows,
        "files": len(files),
        "datasets": answer.num_rows,
        "cores": os.cpu_count(),
        "build_s": round(build, 1),
        "query_s": round(cold_s, 3),
        "query_warm_s": round(warm, 3),
        "bare_duckdb_s": round(bare, 3),
        "ratio_bare_to_query": round(bare / cold_s, 3),
    }
