"""Manifest tables written directly (no model, no Ray), for tests of what reads manifests."""

from __future__ import annotations

import datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog

from pipeline.catalog import CatalogConfig
from pipeline.manifest import ARROW_SCHEMA, open_table

T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)


def s3_warehouse(root, bucket: str) -> CatalogConfig:
    """The SQLite catalog under `root` with its warehouse in s3://`bucket`/warehouse."""
    return CatalogConfig(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{root}/catalog.db",
            "warehouse": f"s3://{bucket}/warehouse",
        }
    )


def sqlite_catalog(root) -> Catalog:
    return load_catalog(
        "test", type="sql", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/wh"
    )


def manifest_rows(rows: list[dict], model_id: str = "m1", minutes: int = 0) -> pa.Table:
    """Rows with defaults for every column the test does not care about."""
    scored_at = T0 + datetime.timedelta(minutes=minutes)
    full = [
        {
            "dataset": "d",
            "shard": "shard-0.tar",
            "identity": None,
            "status": "ok",
            "error": None,
            "width": 112,
            "height": 112,
            "model_id": model_id,
            "run_id": "run",
            "scored_at": scored_at,
            "embedding": None,
            **row,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(full, schema=ARROW_SCHEMA)


def write_manifest(catalog: Catalog, name: str, *batches: pa.Table, properties=None) -> None:
    table = open_table(catalog, name)
    for batch in batches:
        table.append(batch, snapshot_properties=properties or {})
