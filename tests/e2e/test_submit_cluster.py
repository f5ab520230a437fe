"""`fiqa submit`: jobs on a real local Ray cluster (`ray start --head`, token auth on)."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.catalog import open_catalog
from pipeline.manifest import open_table
from pipeline.runlog import read_runs
from tests.builders import write_faces
from tests.pipeline.test_scoring import artifact

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node of its own: its own ports, temp dir, token and process group, so that it
    neither meets nor stops any other Ray on this machine."""
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    dashboard = free_port()
    workers = 20000 + secrets.randbelow(40000)
    head = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--min-worker-port={workers}",
            f"--max-worker-port={workers + 60}",
            "--num-cpus=4",
            f"--temp-dir={tmp_path_factory.mktemp('ray')}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the dashboard did not come up"
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5)
                break
            except urllib.error.HTTPError:
                break  # it answers (an auth refusal is an answer)
            except OSError:
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def submit(cluster, home, *command: str) -> subprocess.CompletedProcess:
    address, env = cluster
    return subprocess.run(
        [
            *(sys.executable, "-m", "jobs.cli", "submit", "--address", address),
            *("--env", f"FIQA_HOME={home / 'home'}", "--", *command),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        # The client finds the token as any Ray client does; the code to upload is this tree.
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
    )


def test_score_and_curate_run_as_ray_jobs(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    model = artifact(tmp_path / "model")
    write_faces("wds", str(tmp_path / "wds"), identities=3, per_identity=6, shard_size=10)
    write_faces("parquet", str(tmp_path / "pq"), identities=2, per_identity=5, prefix="p")

    flags = ["--model", model, "--data", str(tmp_path / "wds"), "--format", "wds"]
    job = submit(cluster, tmp_path, "score", *flags, "--table", "faces.quality", "--dataset", "wds")
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "SUCCEEDED" in job.stdout and "scored 18 images of wds" in job.stdout
    rows = open_table(open_catalog(), "faces.quality").scan().to_arrow()
    assert rows.num_rows == 18 and set(rows["dataset"].to_pylist()) == {"wds"}

    config = tmp_path / "curate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "table": "faces.quality",
                "model": model,
                "datasets": [
                    {"name": "wds", "data": str(tmp_path / "wds"), "format": "wds"},
                    {"name": "pq", "data": str(tmp_path / "pq"), "format": "parquet"},
                ],
                "policy": {"min_images_per_identity": 2},
                "selection": "clean",
                "export": {"to": "list", "out": str(tmp_path / "exports")},
                "batch_size": 16,
            }
        )
    )
    job = submit(cluster, tmp_path, "curate", "--config", str(config))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "SUCCEEDED" in job.stdout
    rows = open_table(open_catalog(), "faces.quality").scan().to_arrow()
    assert rows.num_rows == 28
    (run,) = read_runs(open_catalog(), "faces.curation_runs")
    assert run["status"] == "succeeded" and run["images_scored"] == 10
    assert run["datasets"]["wds"]["shards_new"] == 0 and run["datasets"]["pq"]["shards_new"] == 1
    assert Path(run["outputs"]["export"]).exists()

    job = submit(cluster, tmp_path, "score", "--model", str(tmp_path / "none"), *flags[2:])
    assert job.returncode == 1 and "FAILED" in job.stdout
    assert "not a model artifact" in job.stdout
