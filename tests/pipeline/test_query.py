"""Read-only SQL over manifest snapshots: results, time travel, selections, refusals."""

import datetime

import pyarrow as pa
import pytest

from pipeline.catalog import open_catalog
from pipeline.query import QueryError, open_query
from pipeline.selection import ARROW_SCHEMA as SELECTION_SCHEMA
from pipeline.selection import write_selection
from pipeline.storage import filesystem
from tests.manifests import manifest_rows, s3_warehouse, sqlite_catalog, write_manifest


@pytest.fixture
def catalog(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    first = manifest_rows([{"image_id": f"i{k}", "quality": k / 10} for k in range(10)])
    second = manifest_rows([{"image_id": "bad", "quality": None, "status": "decode_error"}])
    write_manifest(catalog, "ns.manifest", first, second)
    return catalog


def test_select_over_current_snapshot(catalog):
    with open_query(catalog, "ns.manifest") as q:
        result = q.sql("SELECT status, count(*) AS n FROM manifest GROUP BY status ORDER BY 1")
        assert result.to_pylist() == [{"status": "decode_error", "n": 1}, {"status": "ok", "n": 10}]
        median = q.sql("SELECT quantile_cont(quality, 0.5) AS m FROM manifest")["m"][0].as_py()
        assert median == pytest.approx(0.45)


def test_snapshot_and_as_of(catalog):
    table = catalog.load_table("ns.manifest")
    first, second = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    with open_query(catalog, "ns.manifest", snapshot_id=first.snapshot_id) as q:
        assert q.sql("SELECT count(*) AS n FROM manifest")["n"][0].as_py() == 10
    as_of = datetime.datetime.fromtimestamp(first.timestamp_ms / 1000, datetime.UTC)
    with open_query(catalog, "ns.manifest", as_of=as_of) as q:
        assert q.snapshot_id == first.snapshot_id
    with open_query(catalog, "ns.manifest") as q:
        assert q.snapshot_id == second.snapshot_id
    with pytest.raises(QueryError, match="no snapshot 42"):
        open_query(catalog, "ns.manifest", snapshot_id=42)
    with pytest.raises(QueryError, match="no snapshot at or before"):
        open_query(catalog, "ns.manifest", as_of=datetime.datetime(2000, 1, 1))


def test_selections_are_exposed_by_name(catalog):
    rows = [
        {"dataset": "d", "image_id": "i1", "keep": True, "reason": "kept"},
        {"dataset": "d", "image_id": "i2", "keep": False, "reason": "min_quality"},
    ]
    write_selection(catalog, "ns.clean", pa.Table.from_pylist(rows, SELECTION_SCHEMA), {})
    with open_query(catalog, "ns.manifest") as q:
        assert q.relations == ("manifest", "clean")
        kept = q.sql(
            "SELECT m.image_id FROM manifest m JOIN clean s USING (dataset, image_id) WHERE keep"
        )
        assert kept["image_id"].to_pylist() == ["i1"]


def test_missing_table(catalog):
    with pytest.raises(QueryError, match=r"no manifest table 'ns\.nope'"):
        open_query(catalog, "ns.nope")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO manifest SELECT * FROM manifest", "INSERT statement"),
        ("UPDATE manifest SET quality = 1", "UPDATE statement"),
        ("DELETE FROM manifest", "DELETE statement"),
        ("CREATE TABLE t AS SELECT * FROM manifest", "CREATE statement"),
        ("DROP VIEW manifest", "DROP statement"),
        ("COPY manifest TO '{tmp}/out.csv'", "COPY statement"),
        ("COPY (SELECT 1) TO '{tmp}/out.parquet' (FORMAT parquet)", "COPY statement"),
        ("EXPORT DATABASE '{tmp}/db'", "EXPORT statement"),
        ("ATTACH '{tmp}/other.db' AS other", "ATTACH statement"),
        ("INSTALL httpfs", "LOAD statement"),
        ("LOAD httpfs", "LOAD statement"),
        ("SET enable_external_access = true", "SET statement"),
        ("PRAGMA database_list", "PRAGMA statement"),
        ("SELECT 1; SELECT 2", "expected one statement, got 2"),
        ("SELECT * FROM read_csv('{tmp}/secret.csv')", "reaches outside the exposed tables"),
        ("SELECT * FROM read_text('{tmp}/secret.csv')", "reaches outside the exposed tables"),
        ("SELECT * FROM read_parquet('{tmp}/x.parquet')", "reaches outside the exposed tables"),
        ("SELECT * FROM '{tmp}/secret.csv'", "reaches outside the exposed tables"),
        ("SELECT * FROM glob('{tmp}/*')", "reaches outside the exposed tables"),
        ("SELECT * FROM read_blob('{tmp}/secret.csv')", "reaches outside the exposed tables"),
    ],
)
def test_refuses_anything_but_reading_the_tables(catalog, tmp_path, sql, message):
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    with open_query(catalog, "ns.manifest") as q, pytest.raises(QueryError, match=message):
        q.sql(sql.format(tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.db").exists()


def test_sql_errors_are_query_errors(catalog):
    with open_query(catalog, "ns.manifest") as q, pytest.raises(QueryError, match="nope"):
        q.sql("SELECT nope FROM manifest")


def test_a_manifest_in_s3_is_read_through_the_storage_layer(tmp_path, s3_bucket):
    catalog = open_catalog(s3_warehouse(tmp_path, s3_bucket))
    write_manifest(catalog, "ns.manifest", manifest_rows([{"image_id": "a", "quality": 0.5}]))
    fs, root = filesystem(f"s3://{s3_bucket}/secret.csv")
    fs.pipe_file(root, b"a,b\n1,2\n")
    with open_query(catalog, "ns.manifest") as q:
        assert q.sql("SELECT image_id, quality FROM manifest").to_pylist() == [
            {"image_id": "a", "quality": 0.5}
        ]
        # The bucket's other objects stay out of reach, through the same filesystem.
        with pytest.raises(QueryError, match="reaches outside the exposed tables"):
            q.sql(f"SELECT * FROM read_csv('s3://{s3_bucket}/secret.csv')")


def test_nan_qualities_are_seen_whatever_the_files_statistics_say(tmp_path):
    # Parquet's min/max of a float column leave NaN out (here 0.1 .. 0.9): a reader that
    # trusts them as the whole range loses the NaN row from these answers.
    catalog = sqlite_catalog(tmp_path)
    qualities = [float("nan"), 0.9, 0.1]
    rows = [{"image_id": f"i{k}", "quality": q} for k, q in enumerate(qualities)]
    write_manifest(catalog, "ns.manifest", manifest_rows(rows))
    with open_query(catalog, "ns.manifest") as q:
        for sql, expected in [
            ("SELECT count(*) AS n FROM manifest WHERE isnan(quality)", 1),
            ("SELECT count(*) AS n FROM manifest WHERE quality > 0.95", 1),  # NaN is largest
            (
                "SELECT count(*) AS n FROM (SELECT CASE WHEN isnan(quality) THEN NULL "
                "ELSE quality END AS q FROM manifest) WHERE q IS NULL",
                1,
            ),
        ]:
            assert q.sql(sql).to_pylist() == [{"n": expected}], sql
