"""A pretrained FR model's certainty ratio as the quality target (`fiqa train --teacher`).

By default the quality token regresses the CR of the FR head being trained. Trained from
scratch on a few hundred identities, that head tells them apart by coarse traits, so its CR
hardly falls under blur, downsampling or JPEG, which take away the detail a real FR model
needs (docs/benchmarks.md). A teacher, a pretrained FR model (`FrModelSpec`: dlib, an ONNX
file or one of our artifacts), gives a CR that does fall.

Two passes over the training data, one Ray task per shard; memory grows with a shard and
with the classes, never with the rows:

1. describe: every readable, labelled image, and `copies` degraded copies of it, go through
   the teacher. A copy gets one pixel-level degradation of `fiqa synth`'s catalogue (JPEG and
   occlusion more often: `COPY_SHARES`), drawn from the run's seed and the image id
   (`copy_degradations`), so the training loop redraws the same copy from the same bytes.
   The descriptors go to `descriptors/<shard>.parquet`; the task returns its per-class sums
   of the as-read images (copy 0).
2. label: the driver makes the class centres, the per-class means less the mean over all
   as-read images (a pretrained model's descriptors share a large common part: on raw
   descriptors every cosine is near 0.9 and the CR hardly varies). Each task computes
   CR = CCS / (NNCCS + 1) of every row against all centres (in blocks of classes) and writes
   `labels/<shard>.parquet`.

Training reads a shard's labels beside its images (`Targets`). Files are written whole, and a
pass reuses the files that exist, so rerunning a run name resumes labelling where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.datasource import shard_rows
from pipeline.decode import decode_batch
from pipeline.evaluation.fr_models import FrModelSpec, load_fr_model
from pipeline.status import OK
from pipeline.storage import StorageOptions, committed, filesystem
from pipeline.synth.degradations import degrade
from pipeline.synth.sampling import DegradationPolicy, sample_degradation
from pipeline.synth.types import PIXEL_DEGRADATIONS, Degradation

DESCRIPTORS, LABELS = "descriptors", "labels"
EMBED_BATCH = 64  # images per teacher call
CLASS_BLOCK = 65536  # centres per matrix product when labelling
CACHED_SHARDS = 4  # shards' labels a training decode process keeps
SIGNATURE_FILE = "teacher.json"
PROGRESS_S = 30.0


class TeacherError(RuntimeError):
    """Teacher labels that cannot be made (or read) for this training data."""


def shard_file(key: str) -> str:
    """The file stem of a shard's descriptors and labels: its key may hold any character."""
    return hashlib.sha1(key.encode()).hexdigest()[:20]


# Chances that a copy is of these kinds before the uniform draw over every pixel-level kind.
# They are the kinds a small student learns slowest from the teacher's CR: at an equal share
# JPEG (luma blocking) and occlusion stayed above -0.6 on real faces while blur, noise and
# downsampling reached -0.9 (docs/benchmarks.md, "8x8 patches and copies weighted to JPEG").
COPY_SHARES: tuple[tuple[str, float], ...] = (("jpeg", 0.4), ("occlusion", 0.2))
_COPY_POLICY = DegradationPolicy(enabled=PIXEL_DEGRADATIONS, probability=1.0, mix=(1.0,))


def copy_degradations(image_id: str, copy: int, seed: int) -> tuple[Degradation, ...]:
    """The degradation of an image's copy (none for copy 0), the same wherever it is drawn:
    a kind of `COPY_SHARES` with its chance, else any pixel-level kind; severity uniform."""
    if copy == 0:
        return ()
    rng = np.random.default_rng([seed, zlib.crc32(image_id.encode()), copy])
    draw = rng.random()
    for kind, share in COPY_SHARES:
        if draw < share:
            return (sample_degradation(kind, rng.uniform(), rng),)
        draw -= share
    return _COPY_POLICY.sample(rng)


def with_copies(
    pixels: np.ndarray, image_ids: np.ndarray, copies: int, seed: int, ok: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image followed by its `copies` degraded copies (only readable ones, `ok`, are
    degraded): (pixels, row of the original image, copy index)."""
    rows = np.repeat(np.arange(len(pixels)), copies + 1)
    copy = np.tile(np.arange(copies + 1, dtype=np.int16), len(pixels))
    out = pixels[rows]
    degraded = copy > 0 if ok is None else (copy > 0) & ok[rows]
    for i in np.flatnonzero(degraded):
        out[i] = degrade(out[i], copy_degradations(image_ids[rows[i]], int(copy[i]), seed))
    return out, rows, copy


@dataclass(frozen=True)
class Plan:
    """What to label and where: the teacher, how to read the data's shards, the class index
    of each identity, the copies per image, and the folder of the files (on `storage`)."""

    teacher: FrModelSpec
    format: str
    format_options: dict
    data_storage: StorageOptions | None
    storage: StorageOptions | None
    classes: dict[str, int]
    copies: int
    seed: int
    root: str  # URI of the folder holding descriptors/ and labels/
    gpus: float = 0.0  # per describe task: an artifact teacher runs on a GPU when given one

    def path(self, kind: str, key: str) -> str:
        return file_path(self.root, kind, key)

    def signature(self) -> dict:
        """What the labels depend on; a rerun must match it to reuse them."""
        identities = "\n".join(sorted(self.classes, key=self.classes.__getitem__))
        return {
            "teacher": self.teacher.model_dump(mode="json"),
            "copies": self.copies,
            "copy_shares": dict(COPY_SHARES),
            "seed": self.seed,
            "classes": hashlib.sha1(identities.encode()).hexdigest(),
        }


def file_path(root: str, kind: str, key: str) -> str:
    """Where a shard's descriptors or labels (`kind`) go."""
    return f"{root.rstrip('/')}/{kind}/{shard_file(key)}.parquet"


def _read_table(uri: str, storage: StorageOptions | None) -> pa.Table | None:
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()))


def _write_table(table: pa.Table, uri: str, storage: StorageOptions | None) -> None:
    """Written whole (`committed`): a file that exists is complete."""
    fs, path = filesystem(uri, storage)
    with committed(fs, path) as f:
        pq.write_table(table, f)


def _describe_rows(plan: Plan, uri: str, shard) -> pa.Table:
    """The teacher's descriptors of one shard's readable, labelled images and their copies."""
    teacher = load_fr_model(plan.teacher, plan.storage, "cuda" if plan.gpus else "cpu")
    columns: dict[str, list] = {"image_id": [], "copy": [], "label": [], "descriptor": []}
    rows = shard_rows(plan.format, plan.format_options, uri, plan.data_storage, shard)

    def flush(chunk: list[dict]) -> None:
        decoded = decode_batch({k: [r[k] for r in chunk] for k in ("image", "status")})
        labels = np.array([plan.classes.get(r["identity"], -1) for r in chunk])
        keep = (decoded["status"] == OK) & (labels >= 0)
        ids = np.array([r["image_id"] for r in chunk], dtype=object)[keep]
        pixels, source, copy = with_copies(decoded["pixels"][keep], ids, plan.copies, plan.seed)
        columns["image_id"] += ids[source].tolist()
        columns["copy"] += copy.tolist()
        columns["label"] += labels[keep][source].tolist()
        columns["descriptor"] += list(teacher.embed(pixels).astype(np.float32))

    chunk: list[dict] = []
    for row in rows:
        if row["status"] == OK and row["identity"] is not None:
            chunk.append(row)
        if len(chunk) == EMBED_BATCH:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    descriptors = np.asarray(columns.pop("descriptor"), dtype=np.float32)
    dim = descriptors.shape[1] if len(descriptors) else 0
    offsets = pa.array(np.arange(len(descriptors) + 1, dtype=np.int32) * dim)
    return pa.table(
        {
            "image_id": pa.array(columns["image_id"], pa.string()),
            "copy": pa.array(columns["copy"], pa.int16()),
            "label": pa.array(columns["label"], pa.int64()),
            "descriptor": pa.ListArray.from_arrays(offsets, pa.array(descriptors.ravel())),
        }
    )


def _descriptors(table: pa.Table) -> np.ndarray:
    """(rows, dim) float32; (0, 0) for a shard without a described image."""
    values = table.column("descriptor").combine_chunks().flatten().to_numpy()
    return values.reshape(len(table), -1) if len(table) else values.reshape(0, 0)


@ray.remote(num_cpus=1)
def describe_shard(plan: Plan, uri: str, shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 for one shard (reusing its descriptors file if it exists): the classes of its
    as-read images, their descriptor sums and counts."""
    path = plan.path(DESCRIPTORS, shard.key)
    table = _read_table(path, plan.storage)
    if table is None:
        table = _describe_rows(plan, uri, shard)
        _write_table(table, path, plan.storage)
    as_read = table.filter(pc.equal(table.column("copy"), 0))
    descriptors = _descriptors(as_read)
    labels = as_read.column("label").to_numpy()
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), descriptors.shape[1]), dtype=np.float64)
    np.add.at(sums, index, descriptors)
    return classes, sums, counts


def certainty_ratios(embedding: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """CR = CCS / (NNCCS + 1 + 1e-9) of unit rows against unit class centres, taking the
    classes in blocks so that memory stays with the block, not the class count."""
    rows = np.arange(len(embedding))
    ccs = np.einsum("nd,nd->n", embedding, centres[labels])
    nnccs = np.full(len(embedding), -np.inf, dtype=np.float32)
    for start in range(0, len(centres), CLASS_BLOCK):
        cos = embedding @ centres[start : start + CLASS_BLOCK].T
        own = (labels >= start) & (labels < start + len(cos[0]))
        cos[rows[own], labels[own] - start] = -np.inf
        nnccs = np.maximum(nnccs, cos.max(axis=1))
    return (ccs / (nnccs + 1 + 1e-9)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@ray.remote(num_cpus=1)
def label_shard(plan: Plan, key: str, centres: np.ndarray, mean: np.ndarray) -> int:
    """Pass 2 for one shard (skipped if its labels file exists): its rows' CR. Returns the
    rows labelled."""
    path = plan.path(LABELS, key)
    done = _read_table(path, plan.storage)
    if done is not None:
        return len(done)
    table = _read_table(plan.path(DESCRIPTORS, key), plan.storage)
    cr = np.zeros(0, dtype=np.float32)
    if len(table):  # else a shard without one readable, labelled image
        embedding = _unit(_descriptors(table) - mean).astype(np.float32)
        cr = certainty_ratios(embedding, table.column("label").to_numpy(), centres)
    labels = pa.table(
        {"image_id": table.column("image_id"), "copy": table.column("copy"), "cr": cr}
    )
    _write_table(labels, path, plan.storage)
    return len(labels)


def _finished(tasks: list, what: str, say: Callable[[str], None]) -> Iterator:
    """Each task's result as it finishes, with a progress line at most every PROGRESS_S
    seconds and one at the end. A finished task's reference is dropped once its result is
    yielded, so neither the driver nor the object store holds every shard's result; pass the
    list without keeping it."""
    pending, total, done = tasks, len(tasks), 0
    del tasks
    started = said = time.perf_counter()
    while pending:
        # Everything finished within a second: one wait per second, not one per shard.
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        while ready:
            yield ray.get(ready.pop())
            done += 1
        now = time.perf_counter()
        if now - said >= PROGRESS_S or not pending:
            say(f"teacher {what}: {done}/{total} shards, {now - started:.0f} s")
            said = now


def label(plan: Plan, shards: list[tuple[str, object]], say: Callable[[str], None]) -> int:
    """Both passes over `shards` ((dataset URI, shard) pairs); returns the rows labelled."""
    keys = [shard.key for _, shard in shards]
    if len(set(keys)) < len(keys):
        raise TeacherError(
            "teacher labels are kept per shard key, and the training datasets share some: "
            "give datasets with distinct shard names"
        )
    try:  # on the driver first: a missing extra or file is said once, not by every task
        load_fr_model(plan.teacher, plan.storage)
    except (RuntimeError, OSError, ValueError) as e:
        raise TeacherError(f"teacher {plan.teacher.uri}: {e}") from e
    check_signature(plan)
    plan_ref = ray.put(plan)
    describe = describe_shard.options(num_gpus=plan.gpus)
    described = _finished([describe.remote(plan_ref, u, s) for u, s in shards], "describe", say)
    sums, counts = None, np.zeros(len(plan.classes), dtype=np.int64)
    for classes, class_sums, class_counts in described:
        if not len(classes):
            continue
        if sums is None:  # the descriptor size is known from the first described shard
            sums = np.zeros((len(plan.classes), class_sums.shape[1]), dtype=np.float64)
        sums[classes] += class_sums
        counts[classes] += class_counts
    if sums is None:
        raise TeacherError("no readable labelled image to describe")
    mean = sums.sum(axis=0) / counts.sum()
    centres = _unit(sums / np.maximum(counts, 1)[:, None] - mean).astype(np.float32)
    centres[counts == 0] = 0  # a class with no readable image is no one's neighbour
    refs = ray.put(centres), ray.put(mean.astype(np.float32))
    return sum(_finished([label_shard.remote(plan_ref, k, *refs) for k in keys], "label", say))


def check_signature(plan: Plan) -> None:
    """Records what the labels under `plan.root` depend on, or refuses a plan that differs."""
    fs, path = filesystem(f"{plan.root.rstrip('/')}/{SIGNATURE_FILE}", plan.storage)
    signature = plan.signature()
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            if json.load(f) != signature:
                raise TeacherError(
                    f"{plan.root} holds teacher labels of another teacher, copy count, seed or "
                    "set of identities: train under a new run name"
                )
        return
    with committed(fs, path) as f:
        f.write(json.dumps(signature, indent=1).encode())


class Targets:
    """The teacher's CR of training rows, looked up by shard, image id and copy, with a few
    shards' labels kept in memory (a decode task reads one shard's rows in order)."""

    def __init__(self, root: str, storage: StorageOptions | None):
        self.root, self.storage = root, storage
        self.cache: OrderedDict[str, dict[tuple[str, int], float]] = OrderedDict()

    def shard(self, key: str) -> dict[tuple[str, int], float]:
        if key not in self.cache:
            table = _read_table(file_path(self.root, LABELS, key), self.storage)
            if table is None:
                raise TeacherError(f"shard {key} has no teacher labels under {self.root}")
            columns = (table.column(c).to_pylist() for c in ("image_id", "copy", "cr"))
            self.cache[key] = {(i, c): cr for i, c, cr in zip(*columns, strict=True)}
            while len(self.cache) > CACHED_SHARDS:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key]

    def __call__(self, shards: np.ndarray, image_ids: np.ndarray, copies: np.ndarray) -> np.ndarray:
        """float32 CR per row; NaN for a row without a label (an image the teacher could not
        read, or data changed since labelling)."""
        return np.array(
            [
                self.shard(s).get((i, int(c)), np.nan)
                for s, i, c in zip(shards, image_ids, copies, strict=True)
            ],
            dtype=np.float32,
        )
