"""Scoring: sample rows -> decoded pixels -> quality (and embeddings) -> manifest rows.

The Ray Data pipeline of one commit group:
  read tasks (one per shard) -> decode tasks (CPU, batched) -> `QualityScorer` actors
  (the model loaded once per actor) -> materialised manifest rows -> `write_iceberg`
  (one snapshot).
Groups of `commit_every` shards are committed one after another, so a crash loses at most the
group in flight and a rerun skips what the table already holds for this model_id.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from pyiceberg.exceptions import CommitFailedException
from ray.data._internal.datasource.iceberg_datasink import IcebergDatasink

from models.artifact import CONFIG_FILE, ArtifactError, InputSpec, load_artifact
from pipeline.catalog import CatalogConfig, catalog_kwargs, open_catalog
from pipeline.datasource import read_samples
from pipeline.decode import OK, DecodeOptions, decode_batch, to_model_input
from pipeline.formats import get_format
from pipeline.formats.base import Shard
from pipeline.manifest import (
    ARROW_SCHEMA,
    committed_shards,
    dataset_source,
    embedding_bytes,
    open_table,
    shards_committed_since,
)
from pipeline.storage import StorageError, StorageOptions, filesystem

log = logging.getLogger(__name__)

# Fault injection for tests: when this variable names a file that does not exist yet, the
# first scorer call creates it and kills its process, once, to exercise actor restarts.
FAULT_ENV = "FIQA_TEST_SCORER_EXIT_ONCE"
# A group whose commit loses to a concurrent writer is retried on the new head this often.
COMMIT_ATTEMPTS = 5


def artifact_config(model_uri: str, storage: StorageOptions | None = None) -> dict:
    """The artifact's config.json, read on the driver without loading the weights (the
    scorers verify model_id against the weights when they load them)."""
    fs, path = filesystem(model_uri, storage)
    try:
        with fs.open(f"{path}/{CONFIG_FILE}", "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise ArtifactError(f"{model_uri}: not a model artifact (no {CONFIG_FILE})") from None


def decode_for_scoring(batch: dict[str, np.ndarray], options: DecodeOptions) -> dict:
    """Decode a batch and drop the encoded bytes: only pixels travel on to the scorers."""
    decoded = decode_batch(batch, options)
    decoded.pop("image")
    return decoded


class QualityScorer:
    """A Ray Data callable class: loads the model once, then scores batches of pixels."""

    def __init__(
        self,
        model_uri: str,
        storage: StorageOptions | None,
        dataset: str,
        run_id: str,
        threads: int | None,
        with_embeddings: bool,
    ):
        fs, path = filesystem(model_uri, storage)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        artifact = load_artifact(path, fs=fs, map_location=self.device)
        self.model, self.model_id = artifact.model, artifact.model_id
        self.options = DecodeOptions.from_input_spec(artifact.input)
        self.dataset, self.run_id, self.with_embeddings = dataset, run_id, with_embeddings

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if (marker := os.environ.get(FAULT_ENV)) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        ok = batch["status"] == OK
        rows = len(ok)
        quality = np.zeros(rows, np.float32)
        embeddings = None
        if ok.any():
            x = to_model_input(batch["pixels"][ok], self.options).to(self.device)
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"),
            ):
                embedding, q = self.model(x)
            quality[ok] = q.float().cpu().numpy()
            embeddings = embedding.float().cpu().numpy() if self.with_embeddings else None
        embedding_column = [None] * rows
        if embeddings is not None:
            for i, value in zip(np.flatnonzero(ok), embedding_bytes(embeddings), strict=True):
                embedding_column[i] = value
        now = datetime.datetime.now(datetime.UTC)
        return pa.table(
            {
                "dataset": pa.array([self.dataset] * rows, pa.string()),
                **{
                    name: text(batch[name])
                    for name in ("image_id", "shard", "identity", "status", "error")
                },
                "quality": pa.array(quality, pa.float32(), mask=~ok),
                "width": pa.array(batch["width"], pa.int32(), mask=batch["width"] < 0),
                "height": pa.array(batch["height"], pa.int32(), mask=batch["height"] < 0),
                "model_id": pa.array([self.model_id] * rows, pa.string()),
                "run_id": pa.array([self.run_id] * rows, pa.string()),
                "scored_at": pa.array([now] * rows, pa.timestamp("us", tz="UTC")),
                "embedding": pa.array(embedding_column, pa.binary()),
            },
            schema=ARROW_SCHEMA,
        )


def text(values: np.ndarray) -> pa.Array:
    """A string column; an all-null Arrow column reaches numpy as floats (NaN), not None."""
    return pa.array([v if isinstance(v, str) else None for v in values], pa.string())


@dataclass(frozen=True)
class ScoringPlan:
    model: str
    data: str
    format: str
    table: str
    dataset: str
    format_options: dict = field(default_factory=dict)
    with_embeddings: bool = False
    batch_size: int = 128
    decode_batch_size: int = 256
    actors: tuple[int, int] = (1, 1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None
    commit_every: int = 16
    storage: StorageOptions | None = None
    catalog: CatalogConfig = field(default_factory=CatalogConfig)


@dataclass
class ScoringSummary:
    run_id: str
    model_id: str
    dataset: str
    table: str
    shards_total: int = 0
    shards_skipped: int = 0
    shards_scored: list[str] = field(default_factory=list)
    images: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    snapshots: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "images_per_s": round(self.images_per_s, 1)}


def manifest_rows(
    plan: ScoringPlan, shards: list[Shard], run_id: str, options: DecodeOptions
) -> ray.data.Dataset:
    """The lazy Ray dataset of manifest rows for `shards`."""
    low, high = plan.actors
    return (
        read_samples(
            plan.format,
            plan.data,
            storage=plan.storage,
            format_options=plan.format_options,
            shards=shards,
        )
        .map_batches(
            decode_for_scoring,
            fn_kwargs={"options": options},
            batch_size=plan.decode_batch_size,
            batch_format="numpy",
        )
        .map_batches(
            QualityScorer,
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,
            fn_constructor_kwargs={
                "model_uri": plan.model,
                "storage": plan.storage,
                "dataset": plan.dataset,
                "run_id": run_id,
                "threads": plan.threads_per_actor,
                "with_embeddings": plan.with_embeddings,
            },
        )
    )


class ScoringError(RuntimeError):
    """A scoring run that could not commit its work."""


class ManifestSink(IcebergDatasink):
    """Ray's Iceberg sink, appending only onto the snapshot the driver checked for committed
    shards. The commit itself asserts that the branch is still where the sink loaded it at
    write start; refusing any other start closes the gap between the check and that load.
    Either way a lost race raises CommitFailedException and nothing is appended."""

    def __init__(self, table: str, *, base_snapshot: int | None, **kwargs):
        super().__init__(table, **kwargs)
        self.base_snapshot = base_snapshot

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        super().on_write_start(schema)
        if self._table.metadata.current_snapshot_id != self.base_snapshot:
            raise CommitFailedException(f"{self.table_identifier} changed since it was checked")


def _only_shards(batch: pa.Table, keys: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["shard"], pa.array(keys, pa.string())))


def only_shards(rows: ray.data.MaterializedDataset, keys: list[str]):
    """The materialised rows of the shards `keys` only."""
    return rows.map_batches(
        _only_shards, fn_kwargs={"keys": keys}, batch_format="pyarrow"
    ).materialize()


@ray.remote(num_cpus=0)
def _block_statuses(block: pa.Table) -> Counter[str]:
    return Counter(block["status"].to_pylist())


def status_counts(rows: ray.data.MaterializedDataset) -> dict[str, int]:
    """Rows per status of materialised manifest rows, counted where the blocks are."""
    counts = sum(ray.get([_block_statuses.remote(b) for b in rows.to_arrow_refs()]), Counter())
    return dict(sorted(counts.items()))


def score(plan: ScoringPlan, on_commit: Callable[[str], None] = print) -> ScoringSummary:
    """Score every shard of the dataset not yet in the table for this model_id."""
    start = time.perf_counter()
    config = artifact_config(plan.model, plan.storage)
    model_id = config["model_id"]
    options = DecodeOptions.from_input_spec(InputSpec.from_dict(config["input"]))
    summary = ScoringSummary(
        run_id=uuid.uuid4().hex[:16], model_id=model_id, dataset=plan.dataset, table=plan.table
    )
    table = open_table(open_catalog(plan.catalog, plan.storage), plan.table)
    fs, root = filesystem(plan.data, plan.storage)
    shards = get_format(plan.format, **plan.format_options).list_shards(fs, root)
    if not shards:
        raise StorageError(f"{plan.data}: no {plan.format} shards found")
    done = committed_shards(table, plan.dataset, model_id)
    todo = [s for s in shards if s.key not in done]
    summary.shards_total, summary.shards_skipped = len(shards), len(shards) - len(todo)
    on_commit(
        f"{plan.dataset}: {len(shards)} shards, {summary.shards_skipped} already in "
        f"{plan.table} for model {model_id}, {len(todo)} to score"
    )
    source = dataset_source(plan.data, plan.format, plan.format_options)
    statuses: Counter[str] = Counter()
    groups = [todo[i : i + plan.commit_every] for i in range(0, len(todo), plan.commit_every)]
    checked = table.current_snapshot()
    for number, group in enumerate(groups, 1):
        keys, rows = [s.key for s in group], None
        for _attempt in range(COMMIT_ATTEMPTS):
            # Another run may be scoring this dataset too: skip what it committed meanwhile.
            done |= shards_committed_since(table, checked, plan.dataset, model_id)
            checked = table.current_snapshot()
            taken = [k for k in keys if k in done]
            if taken:
                keys = [k for k in keys if k not in done]
                summary.shards_skipped += len(taken)
                on_commit(
                    f"commit {number}/{len(groups)}: {len(taken)} shards were committed by "
                    "another run meanwhile"
                )
            if not keys:
                break
            if rows is None:
                wanted = [s for s in group if s.key in keys]
                rows = manifest_rows(plan, wanted, summary.run_id, options).materialize()
            elif taken:
                rows = only_shards(rows, keys)
            counts = status_counts(rows)
            sink = ManifestSink(
                plan.table,
                base_snapshot=checked.snapshot_id if checked else None,
                catalog_kwargs=catalog_kwargs(plan.catalog, plan.storage),
                snapshot_properties={
                    "fiqa.run_id": summary.run_id,
                    "fiqa.model_id": model_id,
                    "fiqa.dataset": plan.dataset,
                    "fiqa.source": json.dumps(source, sort_keys=True),
                    "fiqa.shards": json.dumps(keys),
                    "fiqa.statuses": json.dumps(counts, sort_keys=True),
                },
            )
            try:
                rows.write_datasink(sink)
                break
            except CommitFailedException:
                on_commit(f"commit {number}/{len(groups)}: the table changed meanwhile; retrying")
        else:
            raise ScoringError(
                f"{plan.table}: {COMMIT_ATTEMPTS} commits in a row lost to concurrent writers"
            )
        if not keys:
            continue
        table.refresh()
        checked = table.current_snapshot()
        snapshot = checked.snapshot_id
        done |= set(keys)
        summary.snapshots.append(snapshot)
        summary.shards_scored.extend(keys)
        statuses.update(counts)
        images = sum(counts.values())
        summary.images += images
        on_commit(
            f"commit {number}/{len(groups)}: {len(keys)} shards, {images} images "
            f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
            f"snapshot {snapshot}"
        )
    summary.statuses = dict(sorted(statuses.items()))
    summary.seconds = time.perf_counter() - start
    return summary
