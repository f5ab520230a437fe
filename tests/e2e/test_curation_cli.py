"""`fiqa filter` and `fiqa query` from the command line over the embedded catalog."""

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.cli import main
from pipeline.catalog import open_catalog
from pipeline.selection import load_selection
from tests.manifests import manifest_rows, write_manifest

SOURCE = {"data": "/data/faces", "format": "wds", "format_options": {}}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    rows = [
        {"image_id": f"{who}{i}", "identity": who, "quality": q}
        for who, qualities in {"A": [0.9, 0.7, 0.5, 0.3, 0.1], "B": [0.8, 0.6]}.items()
        for i, q in enumerate(qualities)
    ]
    rows.append({"image_id": "B9", "identity": "B", "quality": None, "status": "decode_error"})
    properties = {"fiqa.dataset": "d", "fiqa.source": json.dumps(SOURCE)}
    write_manifest(open_catalog(), "faces.quality", manifest_rows(rows), properties=properties)
    return tmp_path


def test_filter_with_a_policy_file_and_a_flag_override(home, capsys):
    policy = home / "policy.yaml"
    policy.write_text(yaml.safe_dump({"drop_bottom_percent_per_identity": 20, "min_quality": 0.5}))
    flags = ["--min-quality", "0.2", "--min-images-per-identity", "3", "--out", "clean"]
    code = main(["filter", "--table", "faces.quality", "--policy", str(policy), *flags, "--json"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    # A: 0.1 < 0.2 (min_quality, the flag beat the file's 0.5); 20% of A's 4 left = 0;
    # B: 2 ok images < 3. B9: status.
    assert summary["summary"]["by_reason"] == {
        "kept": 4,
        "min_images_per_identity": 2,
        "min_quality": 1,
        "status": 1,
    }
    assert summary["policy"]["min_quality"] == 0.2
    assert summary["sources"] == {"d": SOURCE}
    assert "selection: faces.clean" in out
    selection = load_selection(open_catalog(), "faces.clean", kept_only=True)
    assert sorted(selection.rows["image_id"].to_pylist()) == ["A0", "A1", "A2", "A3"]
    assert selection.info["summary"]["identities_kept"] == 1


def test_query_formats_and_selection_access(home, capsys):
    assert (
        main(["filter", "--table", "faces.quality", "--top-k-per-identity", "1", "--out", "top"])
        == 0
    )
    capsys.readouterr()
    sql = "SELECT identity, count(*) AS n FROM manifest GROUP BY identity ORDER BY identity"
    assert main(["query", sql, "--table", "faces.quality", "--format", "csv"]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out))) == [
        {"identity": "A", "n": "5"},
        {"identity": "B", "n": "3"},
    ]
    sql = "SELECT image_id FROM top WHERE keep ORDER BY image_id"
    assert main(["query", sql, "--table", "faces.quality", "--format", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"image_id": "A0"}, {"image_id": "B0"}]
    assert main(["query", "SELECT 1 AS one", "--table", "faces.quality"]) == 0
    assert capsys.readouterr().out.splitlines() == ["one", "---", "1", "(1 row)"]
    sql = "SELECT quantile_cont(quality, [0.5, 0.9]) AS q FROM manifest"
    assert main(["query", sql, "--table", "faces.quality", "--format", "csv"]) == 0
    (q,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert len(json.loads(q["q"])) == 2  # a list comes out as JSON text
    out = home / "worst.parquet"
    sql = "SELECT image_id, quality FROM manifest ORDER BY quality LIMIT 2"
    assert (
        main(["query", sql, "--table", "faces.quality", "--format", "parquet", "--out", str(out)])
        == 0
    )
    assert pq.read_table(out)["image_id"].to_pylist() == ["A4", "A3"]


def test_refusals_are_one_line_errors(home, capsys):
    assert main(["filter", "--table", "faces.quality", "--out", "manifest"]) == 2
    assert "taken by the manifest" in capsys.readouterr().err
    assert main(["query", "DELETE FROM manifest", "--table", "faces.quality"]) == 2
    assert "only SELECT queries are allowed" in capsys.readouterr().err
    assert main(["query", "SELECT 1", "--snapshot", "1", "--as-of", "2026-01-01"]) == 2
    assert "--snapshot or --as-of" in capsys.readouterr().err
    assert main(["filter", "--drop-bottom-percent", "120", "--out", "x"]) == 2
    assert "drop_bottom_percent (--drop-bottom-percent)" in capsys.readouterr().err
    assert main(["filter", "--table", "faces.quality", "--model-id", "nope", "--out", "x"]) == 2
    assert "no rows for model nope" in capsys.readouterr().err


def test_filter_says_which_datasets_the_newest_model_left_out(home, capsys):
    newer = manifest_rows([{"image_id": "x", "dataset": "other", "quality": 0.5}], "m2", 60)
    write_manifest(open_catalog(), "faces.quality", newer)
    assert main(["filter", "--table", "faces.quality", "--out", "newest", "--json"]) == 0
    out = capsys.readouterr().out
    assert "warning: model m2 has not scored d" in out
    assert json.loads(out.strip().splitlines()[-1])["summary"]["images"] == 1
