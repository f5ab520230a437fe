"""`fiqa curate`: idempotent scheduled runs, their run log, and two runs at once."""

import json
import threading
from collections import Counter

import pyarrow.compute as pc
import pytest
import yaml

from jobs.cli import main
from jobs.config import validate
from jobs.curate import CurateConfig
from pipeline.catalog import open_catalog
from pipeline.curation import curate
from pipeline.manifest import open_table
from pipeline.runlog import read_runs
from pipeline.selection import load_selection
from tests.builders import write_faces
from tests.pipeline.test_scoring import artifact

POLICY = {"drop_bottom_percent_per_identity": 20, "min_images_per_identity": 3}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    return tmp_path


def settings(home, **extra) -> dict:
    return {
        "table": "faces.quality",
        "model": artifact(home / "model"),
        "datasets": [
            {"name": "wds", "data": str(home / "wds"), "format": "wds"},
            {"name": "pq", "data": str(home / "pq"), "format": "parquet"},
        ],
        "policy": POLICY,
        "selection": "clean",
        "export": {"to": "list", "out": str(home / "exports")},
        "report": str(home / "reports"),
        "batch_size": 16,
        "commit_every": 1,
        **extra,
    }


def write_config(home, values: dict):
    path = home / "curate.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def manifest_keys():
    rows = open_table(open_catalog(), "faces.quality").scan().to_arrow()
    return Counter(
        zip(
            rows["dataset"].to_pylist(),
            rows["image_id"].to_pylist(),
            rows["model_id"].to_pylist(),
            strict=True,
        )
    )


def test_a_rerun_on_unchanged_data_scores_nothing_and_says_so(ray_local, home, capsys):
    wds = write_faces("wds", str(home / "wds"), identities=4, per_identity=6, corrupt_every=9)
    write_faces("parquet", str(home / "pq"), identities=2, per_identity=5, prefix="p")
    config = write_config(home, settings(home))

    assert main(["curate", "--config", config, "--json"]) == 0
    out = capsys.readouterr().out
    first = json.loads(out.strip().splitlines()[-1])
    assert first["images_scored"] == 34
    assert first["images_errors"] == sum(status != "ok" for status in wds.values()) > 0
    assert first["datasets"]["wds"]["shards_new"] == 2 and first["selection_written"]
    export, report = first["outputs"]["export"], first["outputs"]["report"]
    assert f"export: {export}" in out and f"report: {report}" in out
    lines = (home / "exports" / f"{first['selection_snapshot']}.txt").read_text().splitlines()
    assert len(lines) == 1 + first["images_kept"]  # a header, then one line per kept image
    assert (home / "reports" / str(first["selection_snapshot"]) / "index.html").exists()

    assert main(["curate", "--config", config, "--json"]) == 0
    out = capsys.readouterr().out
    second = json.loads(out.strip().splitlines()[-1])
    assert "nothing new: every shard of wds, pq is already scored" in out
    assert "selection faces.clean is up to date" in out
    assert second["images_scored"] == 0 and not second["selection_written"]
    assert second["outputs"] == first["outputs"]
    assert second["selection_snapshot"] == first["selection_snapshot"]

    # New data arrives as a new shard: only it is scored, and the outputs are renewed.
    write_faces("parquet", str(home / "more"), identities=1, per_identity=4, prefix="q")
    (home / "more/part-000000.parquet").rename(home / "pq/part-000009.parquet")
    assert main(["curate", "--config", config, "--json"]) == 0
    third = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert third["images_scored"] == 4 and third["datasets"]["pq"]["shards_new"] == 1
    assert third["selection_written"] and third["outputs"] != first["outputs"]
    assert sum(manifest_keys().values()) == len(manifest_keys()) == 38

    runs = read_runs(open_catalog(), "faces.curation_runs")
    assert [r["run_id"] for r in runs] == [first["run_id"], second["run_id"], third["run_id"]]
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert [r["images_scored"] for r in runs] == [34, 0, 4]
    assert runs[1]["datasets"]["wds"]["shards_skipped"] == 2
    assert runs[2]["outputs"] == third["outputs"]
    summary = open_table(open_catalog(), "faces.curation_runs").current_snapshot().summary
    assert json.loads(summary["fiqa.curation"])["run_id"] == third["run_id"]
    sql = (
        "SELECT status, images_scored, json_extract_string(outputs, '$.export') AS export "
        "FROM curation_runs ORDER BY started_at"
    )
    capsys.readouterr()
    assert main(["query", sql, "--table", "faces.quality", "--format", "json"]) == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["images_scored"] for r in logged] == [34, 0, 4]
    assert logged[2]["export"] == third["outputs"]["export"]


def test_a_failed_run_is_recorded_with_its_reason(home, capsys):
    (home / "wds").mkdir()
    (home / "pq").mkdir()
    config = write_config(home, settings(home))
    assert main(["curate", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "fiqa curate: error:" in err and "no wds shards found" in err
    (run,) = read_runs(open_catalog(), "faces.curation_runs")
    assert run["status"] == "failed" and "no wds shards found" in run["error"]
    assert run["ended_at"] >= run["started_at"]


def test_a_bad_config_names_the_field(home, capsys):
    values = settings(home)
    values["datasets"][1]["name"] = "wds"
    assert main(["curate", "--config", write_config(home, values)]) == 2
    assert "every name must be different" in capsys.readouterr().err
    values = settings(home, policy={"min_quality": "high"})
    assert main(["curate", "--config", write_config(home, values)]) == 2
    assert "policy.min_quality" in capsys.readouterr().err


@pytest.mark.slow
def test_overlapping_runs_neither_duplicate_nor_corrupt(ray_local, home):
    write_faces("wds", str(home / "wds"), identities=6, per_identity=5, shard_size=10)
    write_faces("parquet", str(home / "pq"), identities=2, per_identity=5, shard_size=10)
    plan = validate(CurateConfig, settings(home, report=None)).plan()
    results, errors, start = {}, [], threading.Barrier(2)

    def run(name):
        lines = []
        start.wait()
        try:
            results[name] = (curate(plan, progress=lines.append), lines)
        except Exception as e:  # reported below: the thread must not swallow it
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=420)
    assert not errors, errors
    (a, a_lines), (b, b_lines) = results["a"], results["b"]

    keys = manifest_keys()
    assert len(keys) == 40 and set(keys.values()) == {1}, "an image was scored twice"
    assert a.images_scored + b.images_scored == 40  # each committed image counted once
    for name in ("wds", "pq"):
        shards = a.datasets[name]["shards_total"]
        assert a.datasets[name]["shards_new"] + b.datasets[name]["shards_new"] == shards
    lost = [line for line in a_lines + b_lines if "committed by another run" in line]
    assert lost, "the runs did not overlap"

    # Both selections were made over the complete manifest; the last one stands.
    selection = load_selection(open_catalog(), "faces.clean")
    assert selection.rows.num_rows == 40
    rows = selection.rows
    pairs = zip(rows["dataset"].to_pylist(), rows["image_id"].to_pylist(), strict=True)
    assert set(pairs) == {(d, i) for d, i, _ in keys}
    kept = pc.sum(selection.rows["keep"].cast("int64")).as_py()
    assert a.images_kept == b.images_kept == kept
    assert selection.snapshot_id in (a.selection_snapshot, b.selection_snapshot)
    for summary in (a, b):
        if summary.selection_written:
            lines = (home / "exports" / f"{summary.selection_snapshot}.txt").read_text()
            assert len(lines.splitlines()) == 1 + kept

    runs = {r["run_id"]: r for r in read_runs(open_catalog(), "faces.curation_runs")}
    assert set(runs) == {a.run_id, b.run_id}
    assert {r["status"] for r in runs.values()} == {"succeeded"}
    assert sum(r["images_scored"] for r in runs.values()) == 40
