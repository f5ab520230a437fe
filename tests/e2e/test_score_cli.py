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
from pipeline.faults import SCORER_CALL
from pipeline.manifest import open_table
from tests.builders import write_faces
from tests.manifests import s3_warehouse
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
    catalog = s3_warehouse(home, s3_bucket)
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


def snapshots() -> int:
    return len(open_table(open_catalog()).snapshots())


def kill_when(args: list[str], ready, what: str) -> None:
    """Start `fiqa score` and SIGKILL it, with the Ray cluster it started, once `ready()`."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "score", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not ready():
        assert driver.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 5 minutes"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


@pytest.mark.slow
def test_driver_killed_at_three_points_then_rerun_scores_each_image_once(home):
    from models.artifact import save_artifact
    from models.vit_fiqa import create_model

    data = str(home / "wds")
    expected = write_faces("wds", data, identities=75, per_identity=40, shard_size=40)
    model = str(home / "model")  # the CPU preset: a stream that lasts a while, to kill it in
    save_artifact(create_model("vit-fiqa-cpu"), model, preset="vit-fiqa-cpu")
    warehouse = home / "home/warehouse"
    args = ["--model", model, "--data", data, "--format", "wds", "--actors", "1"]
    args += ["--batch-size", "8", "--write-batch-size", "40"]

    def files() -> int:
        return sum(1 for _ in warehouse.rglob("*.parquet"))

    # 1. Data files written, nothing committed yet (the commit is held back).
    held = [*args, "--commit-every", "1000", "--commit-interval", "3600"]
    kill_when(held, lambda: warehouse.exists() and files() >= 3, "data files")
    assert open_table(open_catalog()).current_snapshot() is None
    orphans = files()
    # 2. Right after the first commit of a run, 3. after a few more: each mid-stream.
    for commits in (1, 3):
        wanted = snapshots() + commits
        kill_when([*args, "--commit-every", "1"], lambda n=wanted: snapshots() >= n, "commit")
        rows = table_rows()
        assert rows.num_rows == len(set(rows["image_id"].to_pylist())), "no image twice"
        assert 0 < len(set(rows["shard"].to_pylist())) < 75, "the kill must land mid-stream"

    done = set(table_rows()["shard"].to_pylist())
    summary = fiqa_score(*args)
    assert summary["shards_skipped"] == len(done)
    assert sorted(summary["shards_scored"]) == sorted(
        {f"shard-{i:06d}.tar" for i in range(75)} - done
    )
    rows = table_rows()
    assert rows.num_rows == 3000 and len(set(rows["image_id"].to_pylist())) == 3000
    assert set(rows["image_id"].to_pylist()) == set(expected)
    # The killed runs' uncommitted files are left behind, never read as rows.
    assert files() > len(open_table(open_catalog()).inspect.files()) and orphans >= 3


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
        "--actors",
        "1",
        "--batch-size",
        "4",
        env={SCORER_CALL: f"3:{marker}"},
    )
    assert marker.exists(), "the fault was not injected"
    assert summary["images"] == 40
    rows = table_rows()
    assert sorted(rows["image_id"].to_pylist()) == sorted(expected)  # none lost, none twice
