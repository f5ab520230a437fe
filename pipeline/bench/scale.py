"""`fiqa bench scale`: the curation verbs over a generated N-row manifest, each run as a user
runs it (the `fiqa` command with its defaults, on the embedded catalog and a local Ray), with
its peak memory and seconds.

The manifest is shaped like a scored face dataset: four datasets of N/4 rows, 20 images per
identity, 1000 images per shard, 98% ok; its qualities are beta(5, 2). The first dataset is
an insightface RecordIO dataset whose `train.idx` lists all its records (every offset points
at the one record the `.rec` holds, enough for `--to rec-idx`, which reads no image); the
others' images do not exist, so the report shows placeholders and `--to wds` runs with
`--dry-run`.

Each command starts a local Ray of its own (`RAY_ADDRESS=local`), whose processes count too.
Memory is the proportional set size (PSS: shared pages split among their processes) of the
command's whole process tree, sampled every 0.2 s; CPU seconds are the tree's user and system
time (wall seconds depend on what else the machine runs, CPU seconds much less). Also the
peak RSS of the command's own process, which counts in full the shared pages it maps
(libraries, Ray's object store).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.catalog import CatalogConfig, open_catalog
from pipeline.formats.rec import IDX, PROPERTY, REC
from pipeline.formats.recordio import ImageHeader, pack_image_header, pack_record
from pipeline.manifest import ARROW_SCHEMA, dataset_source, open_table

TABLE = "bench.manifest"
DATASETS = 4
PER_IDENTITY = 20
PER_SHARD = 1000
MODEL = "0123456789ab"
ROWS_PER_APPEND = 1_000_000


def manifest_rows(start: int, stop: int, per_dataset: int, rng: np.random.Generator) -> pa.Table:
    """Rows start .. stop - 1 of the manifest; dataset d holds rows d * per_dataset onwards."""
    n = np.arange(start, stop)
    dataset, local = n // per_dataset, n % per_dataset
    ok = rng.random(len(n)) < 0.98
    is_rec = dataset == 0
    key = pa.array(local + 1).cast(pa.string())  # rec keys start at 1 (0 is the header)
    image_id = pc.if_else(
        pa.array(is_rec),
        pc.binary_join_element_wise("train.rec#", key, ""),
        pc.binary_join_element_wise(key, ".jpg", ""),
    )
    first = local // PER_SHARD * PER_SHARD + 1
    last = np.minimum(first + PER_SHARD, per_dataset + 1)
    rec_shard = pc.binary_join_element_wise(
        "train.rec#", pa.array(first).cast(pa.string()), "-", pa.array(last).cast(pa.string()), ""
    )
    wds_shard = pc.binary_join_element_wise(
        "shard-", pa.array(local // PER_SHARD).cast(pa.string()), ".tar", ""
    )
    columns = {
        "dataset": pc.binary_join_element_wise("dataset-", pa.array(dataset).cast(pa.string()), ""),
        "image_id": image_id,
        "shard": pc.if_else(pa.array(is_rec), rec_shard, wds_shard),
        "identity": pa.array(local // PER_IDENTITY).cast(pa.string()),
        "status": pa.array(np.where(ok, "ok", "decode_error")),
        "quality": pa.array(rng.beta(5, 2, len(n)).astype(np.float32), mask=~ok),
        "model_id": pa.array(np.full(len(n), MODEL)),
    }
    return pa.table(
        [columns.get(f.name, pa.nulls(len(n), f.type)) for f in ARROW_SCHEMA], schema=ARROW_SCHEMA
    )


def write_rec_source(root: Path, records: int) -> None:
    """A `.rec` of one image record at offset 0 and a `.idx` listing keys 1 .. records there."""
    root.mkdir(parents=True, exist_ok=True)
    header = pack_image_header(ImageHeader(0.0))
    (root / REC).write_bytes(pack_record(header + b"\xff\xd8\xff\xe0 not decoded"))
    (root / PROPERTY).write_text(f"{records // PER_IDENTITY + 1},112,112\n")
    for start in range(1, records + 1, 10_000_000):
        keys = np.arange(start, min(start + 10_000_000, records + 1))
        lines = pa.table({"key": keys, "offset": np.zeros(len(keys), np.int64)})
        with open(root / IDX, "ab") as f:
            pacsv.write_csv(
                lines,
                f,
                pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
            )


def build(rows: int, workdir: Path, log: Callable[[str], None]) -> None:
    os.environ["FIQA_HOME"] = str(workdir / "home")
    table = open_table(open_catalog(CatalogConfig()), TABLE)
    per_dataset = rows // DATASETS
    rec = workdir / "sources" / "dataset-0"
    write_rec_source(rec, per_dataset)
    rng = np.random.default_rng(0)
    for start in range(0, per_dataset * DATASETS, ROWS_PER_APPEND):
        batch = manifest_rows(
            start, min(start + ROWS_PER_APPEND, per_dataset * DATASETS), per_dataset, rng
        )
        dataset = start // per_dataset
        data, fmt = (
            (str(rec), "rec")
            if dataset == 0
            else (str(workdir / "sources" / f"dataset-{dataset}"), "wds")
        )
        properties = {
            "fiqa.dataset": f"dataset-{dataset}",
            "fiqa.model_id": MODEL,
            "fiqa.source": json.dumps(dataset_source(data, fmt, {})),
        }
        table.append(batch, snapshot_properties=properties)
    log(f"built a {per_dataset * DATASETS:,}-row manifest")


def _status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) or smaps_rollup (Pss), in bytes."""
    name = "smaps_rollup" if field == "Pss" else "status"
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended between listing and reading
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class TreeUsage:
    """Peak PSS of a process and its descendants together, the process's own peak RSS, and
    the CPU seconds of the whole tree, sampled from /proc (Linux)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.tree_peak = 0
        self.own_peak = 0
        self._cpu: dict[int, float] = {}  # pid -> user + system seconds, as last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _watch(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.interval):
            total = 0
            for pid in [self.pid, *_descendants(self.pid)]:
                try:
                    total += _status(pid, "Pss")
                    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                    self._cpu[pid] = (int(stat[11]) + int(stat[12])) / tick  # utime, stime
                    if pid == self.pid:
                        self.own_peak = max(self.own_peak, _status(pid, "VmHWM"))
                except OSError:  # the process ended between listing and reading
                    continue
            self.tree_peak = max(self.tree_peak, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, argv: list[str], log: Callable[[str], None]) -> dict:
    # A command of its own local Ray, even beside a cluster that `ray start` left running,
    # which `ray.init()` would join: its processes are then part of the measured tree.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    usage = TreeUsage(process.pid)
    output, _ = process.communicate()
    usage.stop()
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{name} failed ({process.returncode}):\n{output.decode()[-4000:]}")
    result = {
        "command": name,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.cpu_seconds, 1),
        "tree_peak_mib": round(usage.tree_peak / 2**20),
        "process_peak_mib": round(usage.own_peak / 2**20),
    }
    log(
        f"{name:<28} {result['seconds']:>7.1f} s  {result['cpu_seconds']:>7.1f} CPU s  "
        f"tree {result['tree_peak_mib']:>5} MiB  process {result['process_peak_mib']:>5} MiB"
    )
    return result


LOOKUP = (
    "import os; from pipeline.catalog import CatalogConfig, open_catalog; "
    "from pipeline.manifest import committed_shards; "
    f"t = open_catalog(CatalogConfig()).load_table('{TABLE}'); "
    f"print(len(committed_shards(t, 'dataset-1', '{MODEL}')), 'shards')"
)


def bench_scale(rows: int, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Build the manifest, then run and measure each command in turn."""
    build(rows, workdir, log)
    fiqa = [str(Path(sys.executable).parent / "fiqa")]
    table = ["--table", TABLE]
    out = workdir / "out"
    commands = {
        "filter per-identity": [
            "filter",
            *table,
            "--drop-bottom-percent-per-identity",
            "10",
            "--min-images-per-identity",
            "5",
            "--out",
            "per_identity",
        ],
        "filter global": ["filter", *table, "--drop-bottom-percent", "10", "--out", "bottom"],
        "export list": [
            "export",
            *table,
            "--selection",
            "per_identity",
            "--to",
            "list",
            "--out",
            str(out / "kept.txt"),
        ],
        "export rec-idx": [
            "export",
            *table,
            "--selection",
            "per_identity",
            "--dataset",
            "dataset-0",
            "--to",
            "rec-idx",
            "--out",
            str(out / "rec"),
        ],
        "export wds --dry-run": [
            "export",
            *table,
            "--selection",
            "per_identity",
            "--to",
            "wds",
            "--dry-run",
            "--out",
            str(out / "wds"),
        ],
        "report": [
            "report",
            *table,
            "--selection",
            "per_identity",
            "--out",
            str(out / "report"),
        ],
    }
    results = [measure(name, [*fiqa, *argv], log) for name, argv in commands.items()]
    results.append(measure("committed-shard lookup", [sys.executable, "-c", LOOKUP], log))
    shutil.rmtree(out, ignore_errors=True)
    return {"bench": "scale", "rows": rows, "cores": os.cpu_count(), "commands": results}
