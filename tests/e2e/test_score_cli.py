"""`fiqa score` from the command line: object storage, crashes and dying actors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.catalog import CatalogConfig, open_catalog
from pipeline.manifest import open_table
from tests.builders import write_faces
from tests.pipeline.test_scoring import artifact


def fiqa_score(*args: str, env: dict | None = None, timeout: int = 600) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "score", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def table_rows(catalog: CatalogConfig | None = None, name: str = "fiqa.manifest"):
    return open_table(open_catalog(catalog), name).scan().to_arrow()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.slow
def test_two_formats_on_s3_with_corrupt_samples(home, s3_bucket):
    catalog = CatalogConfig(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{home / 'catalog.db'}",
            "warehouse": f"s3://{s3_bucket}/warehouse",
        }
    )
    config = home / "score.yaml"
    config.write_text(
        yaml.safe_dump(
            {"catalog": catalog.model_dump(), "table": "faces.quality", "commit_every": 2}
        )
    )
    model = artifact(home / "model")
    expected = {}
    for fmt in ("wds", "rec"):
        uri = f"s3://{s3_bucket}/{fmt}-faces"
        statuses = write_faces(
            fmt, uri, identities=10, per_identity=10, corrupt_every=50, shard_size=25
        )
        expected.update({(fmt, k): v for k, v in statuses.items()})
        summary = fiqa_score(
            "--config",
            str(config),
            "--model",
            model,
            "--data",
            uri,
            "--format",
            fmt,
            "--dataset",
            fmt,
        )
        assert summary["images"] == 100 and summary["statuses"]["decode_error"] == 2
    rows = table_rows(catalog, "faces.quality")
    got = dict(
        zip(
            zip(rows["dataset"].to_pylist(), rows["image_id"].to_pylist(), strict=True),
            rows["status"].to_pylist(),
            strict=True,
        )
    )
    assert rows.num_rows == len(got) == 200  # no duplicates
    assert got == expected
    warehouse = open_table(open_catalog(catalog), "faces.quality").location()
    assert warehouse.startswith(f"s3://{s3_bucket}/warehouse")


@pytest.mark.slow
def test_killed_driver_then_rerun_scores_each_image_once(home):
    data = str(home / "wds")
    expected = write_faces("wds", data, identities=8, per_identity=15, shard_size=10)
    model = artifact(home / "model")
    args = [
        sys.executable,
        "-m",
        "jobs.cli",
        "score",
        "--model",
        model,
        "--data",
        data,
        "--format",
        "wds",
        "--commit-every",
        "1",
        "--batch-size",
        "8",
    ]
    driver = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    committed = 0
    while time.monotonic() < deadline and driver.poll() is None:
        table = open_table(open_catalog())
        if table.current_snapshot() is not None:
            committed = len(table.snapshots())
            break
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    driver.wait()
    assert committed >= 1
    before = table_rows()
    done = set(before["shard"].to_pylist())
    assert 0 < len(done) < 12, "the kill must land between the first and the last commit"

    summary = fiqa_score("--model", model, "--data", data, "--format", "wds")
    assert summary["shards_skipped"] == len(done)
    assert sorted(summary["shards_scored"]) == sorted(
        {f"shard-{i:06d}.tar" for i in range(12)} - done
    )
    rows = table_rows()
    assert rows.num_rows == 120 and len(set(rows["image_id"].to_pylist())) == 120
    assert set(rows["image_id"].to_pylist()) == set(expected)


@pytest.mark.slow
def test_a_scorer_that_dies_once_still_gives_full_output(home):
    data = str(home / "wds")
    expected = write_faces("wds", data, identities=4, per_identity=10, shard_size=10)
    model = artifact(home / "model")
    marker = home / "scorer-died"
    summary = fiqa_score(
        "--model",
        model,
        "--data",
        data,
        "--format",
        "wds",
        env={"FIQA_TEST_SCORER_EXIT_ONCE": str(marker)},
    )
    assert marker.exists(), "the fault was not injected"
    assert summary["images"] == 40
    rows = table_rows()
    assert sorted(rows["image_id"].to_pylist()) == sorted(expected)
