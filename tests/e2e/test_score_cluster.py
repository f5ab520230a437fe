"""`fiqa score` on a two-node Ray cluster that shares nothing with the driver but object storage.

The head (the driver's node) has no CPUs, so every read, decode, scoring call and data-file
write runs on the other node. Data, model and warehouse are in s3 (moto); only the SQLite
catalog, which only the driver opens, is a local file. The nodes start without any AWS
variables and with a home of their own, so the workers can reach s3 only with the settings the
driver resolved and handed to them.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.catalog import open_catalog
from pipeline.manifest import open_table
from pipeline.storage import filesystem
from tests.builders import write_faces
from tests.manifests import s3_warehouse
from tests.pipeline.test_scoring import artifact

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def ray_list(kind: str, address: str, env: dict, *args: str, timeout: int = 60) -> list[dict]:
    """`ray list KIND` as records (the state API, through the head's dashboard)."""
    result = subprocess.run(
        [RAY, "list", kind, "--address", address, "--format", "json", "--limit", "10000", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if result.returncode:
        raise RuntimeError(f"ray list {kind}: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def start_node(temp: Path, name: str, env: dict, worker_ports: int, *args: str):
    """`ray start --block` as a process group of its own, with its own ports and temp dir
    (two nodes on one host must not share the per-node defaults)."""
    log = temp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(RAY, "start", "--block", "--node-ip-address=127.0.0.1"),
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--min-worker-port={worker_ports}",
                f"--max-worker-port={worker_ports + 59}",
                f"--object-store-memory={300 * 2**20}",
                f"--temp-dir={temp / name}",
                "--disable-usage-stats",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


def stop(nodes: list) -> None:
    """Stop each node's whole process group: `ray start` and every process it started."""

    def signal_all(number: int) -> None:
        for process, _ in nodes:
            with contextlib.suppress(ProcessLookupError):  # nothing left of that group
                os.killpg(process.pid, number)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 5  # the run is over: no graceful drain to wait for
    for process, _ in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    signal_all(signal.SIGKILL)  # whatever outlived `ray start`'s own shutdown
    for process, _ in nodes:
        process.wait()


def wait_for(what: str, ready, nodes, deadline: float) -> None:
    """Poll `ready()` until it is true; fail with the nodes' logs if one exits or time runs out."""
    problem = ""
    while True:
        for process, log in nodes:
            assert process.poll() is None, f"{log.name}: ray start exited\n{tail(log)}"
        try:
            if ready():
                return
        except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            problem = repr(e)
        assert time.monotonic() < deadline, f"{what} in time; last error: {problem}\n" + "\n".join(
            f"--- {log.name}\n{tail(log)}" for _, log in nodes
        )
        time.sleep(1)


@pytest.fixture
def cluster(tmp_path, tmp_path_factory):
    """(GCS address, environment for Ray clients, head node id, worker node id)."""
    bin_dir = Path(sys.executable).parent
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "AWS_")) and k not in ("PYTHONPATH", "FIQA_HOME")
    }
    env = {**keep, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # Another machine's home: no ~/.aws to fall back on, no ~/.fiqa catalog to find.
    node_env = {**env, "HOME": str(tmp_path / "node-home")}
    gcs_port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    # Below the kernel's ephemeral range, where free_port's ports come from.
    ports = 10000 + secrets.randbelow(20000)
    temp = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must fit 107 bytes
    nodes = []
    try:
        nodes.append(
            start_node(
                temp,
                "head",
                node_env,
                ports,
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=0",  # nothing that needs a CPU can run beside the driver
                "--include-dashboard=true",  # the state API the test asks below
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={free_port()}",
            )
        )
        deadline = time.monotonic() + 180

        def gcs_up() -> bool:
            with socket.create_connection(("127.0.0.1", gcs_port), timeout=2):
                return True

        wait_for("the head's GCS did not come up", gcs_up, nodes, deadline)
        nodes.append(
            start_node(
                temp,
                "worker",
                node_env,
                ports + 60,
                f"--address={address}",
                "--num-cpus=4",
                '--resources={"scorer": 4}',
            )
        )
        alive = []

        def both_alive() -> bool:
            alive[:] = ray_list("nodes", address, env, "--filter", "state=ALIVE", timeout=20)
            return len(alive) == 2

        wait_for("two nodes did not come up", both_alive, nodes, deadline)
        (head,) = [n["node_id"] for n in alive if n["is_head_node"]]
        (worker,) = [n["node_id"] for n in alive if n["resources_total"].get("scorer") == 4]
        yield address, env, head, worker
    finally:
        stop(nodes)


def test_score_runs_on_a_node_without_the_driver_disk(cluster, tmp_path, s3_endpoint, s3_bucket):
    address, ray_env, head, worker = cluster
    # A few shards with every kind of bad sample: 20 images, 5 per shard, 3 corrupt.
    data = f"s3://{s3_bucket}/faces"
    expected = write_faces("wds", data, identities=4, per_identity=5, corrupt_every=6, shard_size=5)
    assert sorted(set(expected.values())) == ["decode_error", "ok", "unsupported"]

    # The model exists only in s3: the local copy is gone before the run starts.
    local_model = artifact(tmp_path / "model")
    model = f"s3://{s3_bucket}/models/micro"
    fs, path = filesystem(model)
    fs.put(local_model, path, recursive=True)
    shutil.rmtree(local_model)

    catalog = s3_warehouse(tmp_path, s3_bucket)
    config = tmp_path / "score.yaml"
    config.write_text(yaml.safe_dump({"catalog": catalog.model_dump(), "table": "faces.quality"}))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "jobs.cli", "score", "--config", str(config)),
            *("--model", model, "--data", data, "--format", "wds", "--dataset", "faces"),
            *("--endpoint-url", s3_endpoint, "--actors", "1", "--cpus-per-actor", "1"),
            *("--commit-every", "2", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # The driver alone has the AWS variables (set by the s3_bucket fixture).
        env={
            **os.environ,
            **{k: v for k, v in ray_env.items() if k.startswith("RAY_AUTH_")},
            "RAY_ADDRESS": address,
            "FIQA_HOME": str(tmp_path / "driver-home"),
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == len(expected) == 20
    assert summary["statuses"] == {"decode_error": 2, "ok": 17, "unsupported": 1}
    assert sorted(summary["shards_scored"]) == [f"shard-{i:06d}.tar" for i in range(4)]
    assert summary["shards_skipped"] == 0

    table = open_table(open_catalog(catalog), "faces.quality")
    rows = table.scan().to_arrow()
    got = dict(zip(rows["image_id"].to_pylist(), rows["status"].to_pylist(), strict=True))
    assert rows.num_rows == len(got), "an image is in the manifest twice"
    assert got == expected
    assert set(rows["run_id"].to_pylist()) == {summary["run_id"]}
    assert set(rows["model_id"].to_pylist()) == {summary["model_id"]}
    files = table.inspect.files()["file_path"].to_pylist()
    assert files and all(f.startswith(f"s3://{s3_bucket}/warehouse/") for f in files), files

    # Where the work ran, from the cluster's own records: the scorers, and every task that
    # reserved resources (reads, decodes, data-file writes), on the worker node; on the head
    # only Ray Data's bookkeeping, which reserves none.
    actors = ray_list("actors", address, ray_env, "--detail")
    tasks = ray_list("tasks", address, ray_env, "--detail")
    scorers = [a for a in actors if "QualityScorer" in a["class_name"]]
    assert scorers and {a["node_id"] for a in scorers} == {worker}, scorers
    work = [t for t in tasks if t["type"] == "NORMAL_TASK" and t["required_resources"]]
    assert work and {t["node_id"] for t in work} == {worker}, work
    on_head = [x for x in actors + tasks if x["node_id"] == head and x["required_resources"]]
    assert not on_head, on_head
