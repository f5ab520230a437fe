"""Scoring: sample rows -> decoded pixels -> quality (and embeddings) -> manifest data files.

One Ray Data stream per run, over every shard the table does not hold yet for this model:
  read tasks (one per shard, the shard's last row marked with its row count) -> decode
  (CPU, batched) -> `QualityScorer` actors (the model loaded once per actor) -> writer
  tasks (Parquet data files of the manifest, one shard per file, into the table's warehouse)
  -> small records (shard, rows, statuses, the file's description) to the driver.
The driver never sees an image. As records arrive it tracks each shard (`ShardLedger`) and
commits completed shards as Iceberg snapshots while the stream flows: every `commit_every`
completed shards or `commit_interval` seconds, whichever comes first. A shard's rows land in
one snapshot; a crash loses only uncommitted shards (their files are orphans, never table
rows, removed by `fiqa maintain`); a rerun skips the shards the table holds.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import ray
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from tqdm import tqdm

from models.artifact import CONFIG_FILE, ArtifactError, InputSpec, load_artifact
from pipeline import faults
from pipeline.catalog import CatalogConfig, open_catalog
from pipeline.cluster import connect
from pipeline.datafiles import FileLayout, append_files
from pipeline.datasource import END_FIELD, ShardDatasource, read_shards
from pipeline.decode import DecodeOptions, decode_pixels, to_model_input
from pipeline.errors import FiqaError
from pipeline.faults import ExitOnce
from pipeline.formats import get_format
from pipeline.formats.base import Shard
from pipeline.ledger import SCORER, ShardLedger, ShardProgress, write_shard_files
from pipeline.manifest import (
    ARROW_SCHEMA,
    committed_shards,
    dataset_source,
    embedding_bytes,
    open_table,
    shards_committed_since,
)
from pipeline.settings import DataSettings, Gpus, gpus_or_none
from pipeline.status import OK
from pipeline.storage import StorageError, StorageOptions, arrow_filesystem, filesystem

log = logging.getLogger(__name__)

# A commit that loses to a concurrent writer is retried on the new head this often.
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


class QualityScorer:
    """A Ray Data callable class: loads the model once, then scores batches of pixels into
    manifest rows (plus the shard-end marker and which model load scored them)."""

    def __init__(
        self,
        model_uri: str,
        storage: StorageOptions | None,
        dataset: str,
        run_id: str,
        threads: int | None,
        with_embeddings: bool,
        fault: ExitOnce | None = None,
    ):
        fs, path = filesystem(model_uri, storage)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        artifact = load_artifact(path, fs=fs, map_location=self.device)
        self.model, self.model_id = artifact.model, artifact.model_id
        self.options = DecodeOptions.from_input_spec(artifact.input)
        self.dataset, self.run_id, self.with_embeddings = dataset, run_id, with_embeddings
        self.load_id = uuid.uuid4().hex[:12]
        self.fault, self.calls = fault, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.calls += 1
        if self.fault:
            self.fault(self.calls)
        ok = batch["status"] == OK
        rows = len(ok)
        quality = np.zeros(rows, np.float32)
        embeddings = None
        if ok.any():
            pixels = torch.as_tensor(batch["pixels"][ok]).to(self.device, non_blocking=True)
            x = to_model_input(pixels, self.options)
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
        table = pa.table(
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
        if END_FIELD.name in batch:  # passed on for the writers (absent when called directly)
            table = table.append_column(END_FIELD, pa.array(batch[END_FIELD.name], pa.int64()))
        return table.append_column(SCORER, pa.array([self.load_id] * rows, pa.string()))


def text(values: np.ndarray) -> pa.Array:
    """A string column; an all-null Arrow column reaches numpy as floats (NaN), not None."""
    return pa.array([v if isinstance(v, str) else None for v in values], pa.string())


def actor_range(value: Any) -> tuple[int, int] | None:
    """`auto` (None: the cluster decides), N, or MIN,MAX to autoscale."""
    if value is None or value == "auto":
        return None
    parts = [str(v) for v in value] if isinstance(value, tuple | list) else str(value).split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError("expected auto, N or MIN,MAX with positive integers")
    low, high = int(parts[0]), int(parts[-1])
    if low > high:
        raise ValueError("MIN must not exceed MAX")
    return low, high


class ScorerSettings(BaseModel):
    """How a scoring run uses the cluster: `fiqa score`'s, `fiqa curate`'s and the scoring
    benchmark's flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    with_embeddings: bool = Field(False, description="also store FR embeddings (float16)")
    batch_size: int = Field(128, gt=0, description="images per model call")
    decode_batch_size: int = Field(256, gt=0, description="images per decode task call")
    write_batch_size: int = Field(
        2048, gt=0, description="scored rows per writer call, split into one file per shard"
    )
    actors: Annotated[tuple[int, int] | None, BeforeValidator(actor_range)] = Field(
        "auto",
        validate_default=True,
        description="scorer actors: auto (one per GPU, else one per core), "
        "N, or MIN,MAX to autoscale",
    )
    cpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="CPUs reserved per scorer actor (default: 1 per GPU actor, "
        "a quarter CPU per torch thread of a CPU actor)",
    )
    gpus: Gpus = Field(
        "auto", description="GPUs per scorer actor: auto (1 when the cluster has GPUs, else 0) or N"
    )
    threads_per_actor: int | None = Field(
        None, ge=1, description="torch threads per CPU actor (default: the cores shared out)"
    )
    commit_every: int = Field(64, gt=0, description="commit once this many shards are done")
    commit_interval: float = Field(
        60.0, gt=0, description="or once this many seconds have passed since the last commit"
    )

    @property
    def gpus_per_actor(self) -> float | None:
        """None: 1 when the cluster has GPUs, else 0."""
        return gpus_or_none(self.gpus)

    def scoring_plan(self, **where) -> ScoringPlan:
        """The plan for these settings; `where` names the model, data, table and catalog."""
        return ScoringPlan(**self.model_dump(include=set(ScorerSettings.model_fields)), **where)


class ScoringPlan(ScorerSettings, DataSettings):
    """A scoring run: its settings, and which model scores which data into which table."""

    model: str
    table: str
    dataset: str
    storage: StorageOptions | None = None
    catalog: CatalogConfig = CatalogConfig()


@dataclass(frozen=True)
class ScorerPool:
    """How many scorer actors, and what each one gets."""

    actors: tuple[int, int]
    cpus: float
    gpus: float
    threads: int | None  # torch threads of a CPU actor

    def for_shards(self, shards: int) -> ScorerPool:
        """No more actors than `shards`: each shard is one input block of the stream, so
        more actors would never get work (and Ray Data warns of them)."""
        low, high = self.actors
        return replace(self, actors=(min(low, shards), min(high, shards)))

    def __str__(self) -> str:
        low, high = self.actors
        count = str(low) if low == high else f"{low} to {high}"
        if self.gpus:
            return f"{count} GPU scorer(s), {self.gpus:g} GPU each (bf16)"
        return f"{count} CPU scorer(s), {self.threads} torch thread(s) each"


def scorer_pool(plan: ScoringPlan, resources: dict[str, float]) -> ScorerPool:
    """The plan's scorer settings, the unset ones derived from the cluster's `resources`:
    one actor per GPU when there are GPUs; else one single-threaded actor per core (which
    beats fewer actors with several torch threads each). A CPU actor reserves a quarter of a
    logical CPU per thread: a run's scorers never hold more than a quarter of the cluster's
    CPUs, so reads and writes, also those of overlapping runs, always find room (Ray Data
    spreads the actors over the nodes). Settings given in the plan win."""
    cores = max(1, int(resources.get("CPU", 1)))
    cpus = plan.cpus_per_actor
    gpus = plan.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if gpus:
        actors = plan.actors or (max(1, int(resources.get("GPU", 0) // gpus)),) * 2
        return ScorerPool(actors, 1.0 if cpus is None else cpus, gpus, plan.threads_per_actor)
    threads = plan.threads_per_actor
    if threads is None:
        threads = 1 if plan.actors is None else max(1, cores // plan.actors[1])
    actors = plan.actors or (max(1, cores // threads),) * 2
    return ScorerPool(actors, threads / 4 if cpus is None else cpus, 0.0, threads)


@dataclass
class ScoringSummary:
    run_id: str
    model_id: str
    dataset: str
    table: str
    scorers: str = ""
    shards_total: int = 0
    shards_skipped: int = 0
    shards_scored: list[str] = field(default_factory=list)
    shards_empty: int = 0
    images: int = 0
    files: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    snapshots: list[int] = field(default_factory=list)
    model_loads: int = 0  # seen in committed rows: one per actor, more if one restarted
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "images_per_s": round(self.images_per_s, 1)}


def manifest_records(
    plan: ScoringPlan,
    pool: ScorerPool,
    shards: list[Shard],
    run_id: str,
    options: DecodeOptions,
    layout: FileLayout,
) -> ray.data.Dataset:
    """The lazy Ray dataset of data-file records for `shards`."""
    low, high = pool.actors
    source = ShardDatasource(
        plan.format,
        plan.data,
        storage=plan.storage,
        format_options=plan.format_options,
        shards=shards,
        mark_end=True,
    )
    return (
        read_shards(source)
        .map_batches(
            decode_pixels,
            fn_kwargs={"options": options},
            batch_size=plan.decode_batch_size,
            batch_format="numpy",
        )
        .map_batches(
            QualityScorer,
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=pool.cpus,
            num_gpus=pool.gpus,
            fn_constructor_kwargs={
                "model_uri": plan.model,
                "storage": plan.storage,
                "dataset": plan.dataset,
                "run_id": run_id,
                "threads": pool.threads,
                "with_embeddings": plan.with_embeddings,
                "fault": faults.exit_once(faults.SCORER_CALL),
            },
        )
        .map_batches(
            write_shard_files,
            fn_kwargs={"layout": layout, "storage": plan.storage, "prefix": f"{run_id}-"},
            batch_size=plan.write_batch_size,
            batch_format="pyarrow",
            num_cpus=0.25,  # light work: never waits for a whole core
        )
    )


class ScoringError(FiqaError, RuntimeError):
    """A scoring run that could not commit its work."""


@contextlib.contextmanager
def ray_bars_off() -> Iterator[None]:
    """Ray Data's own progress bars off while our bar of images runs."""
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = before


class Committer:
    """Commits completed shards of one run onto the table, exactly once per shard."""

    def __init__(
        self, plan: ScoringPlan, summary: ScoringSummary, table: Table, say: Callable[[str], None]
    ):
        self.plan, self.summary, self.table, self.say = plan, summary, table, say
        self.checked = table.current_snapshot()
        self.source = json.dumps(
            dataset_source(plan.data, plan.format, plan.format_options), sort_keys=True
        )
        self.statuses: Counter[str] = Counter()
        self.last = time.monotonic()

    def due(self, ready: int) -> bool:
        """Whether `ready` completed shards make a commit now."""
        late = time.monotonic() - self.last >= self.plan.commit_interval
        return ready >= self.plan.commit_every or (ready > 0 and late)

    def commit(self, shards: list[ShardProgress]) -> None:
        """One snapshot of `shards`; shards another run committed meanwhile are dropped (and
        their files deleted), and a commit that loses a race is retried on the new head."""
        plan, summary = self.plan, self.summary
        for _attempt in range(COMMIT_ATTEMPTS):
            # Another run may be scoring this dataset too: skip what it committed meanwhile.
            taken = shards_committed_since(self.table, self.checked, plan.dataset, summary.model_id)
            self.checked = self.table.current_snapshot()
            lost = [s for s in shards if s.key in taken]
            if lost:
                self.discard(lost)
                summary.shards_skipped += len(lost)
                shards = [s for s in shards if s.key not in taken]
                self.say(f"{len(lost)} shards were committed by another run meanwhile")
            if not shards:
                return
            counts = sum((s.statuses for s in shards), Counter())
            try:
                append_files(
                    self.table,
                    [f for s in shards for f in s.files],
                    {
                        "fiqa.run_id": summary.run_id,
                        "fiqa.model_id": summary.model_id,
                        "fiqa.dataset": plan.dataset,
                        "fiqa.source": self.source,
                        "fiqa.shards": json.dumps([s.key for s in shards]),
                        "fiqa.statuses": json.dumps(dict(sorted(counts.items()))),
                    },
                )
                break
            except CommitFailedException:
                self.say("the table changed meanwhile; retrying the commit")
        else:
            raise ScoringError(
                f"{plan.table}: {COMMIT_ATTEMPTS} commits in a row lost to concurrent writers"
            )
        self.table.refresh()
        self.checked = self.table.current_snapshot()
        self.last = time.monotonic()
        images = sum(counts.values())
        summary.snapshots.append(self.checked.snapshot_id)
        summary.shards_scored.extend(s.key for s in shards)
        summary.files += sum(len(s.files) for s in shards)
        summary.images += images
        self.statuses.update(counts)
        self.say(
            f"commit {len(summary.snapshots)}: {len(shards)} shards, {images} images "
            f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
            f"snapshot {self.checked.snapshot_id}"
        )

    def discard(self, shards: list[ShardProgress]) -> None:
        for shard in shards:
            for data_file in shard.files:
                fs, path = arrow_filesystem(data_file.file_path, self.plan.storage)
                with contextlib.suppress(OSError):  # an orphan left behind is harmless
                    fs.delete_file(path)


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
    if todo:
        connect()
        pool = scorer_pool(plan, ray.cluster_resources()).for_shards(len(todo))
        summary.scorers = str(pool)
        on_commit(f"scoring with {pool}")
        stream(plan, pool, todo, summary, table, options, on_commit)
    summary.seconds = time.perf_counter() - start
    return summary


def stream(
    plan: ScoringPlan,
    pool: ScorerPool,
    todo: list[Shard],
    summary: ScoringSummary,
    table: Table,
    options: DecodeOptions,
    on_commit: Callable[[str], None],
) -> None:
    """Run the one stream over `todo`, committing completed shards while it flows."""
    records = manifest_records(plan, pool, todo, summary.run_id, options, FileLayout.of(table))
    ledger = ShardLedger()
    with (
        ray_bars_off(),
        tqdm(total=None, unit="img", desc="scored", disable=None, dynamic_ncols=True) as bar,
    ):

        def say(line: str) -> None:
            bar.clear()
            on_commit(line)
            bar.refresh()

        committer = Committer(plan, summary, table, say)
        try:
            for batch in records.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(ledger.add_records(batch))
                if ledger.completed:  # the bar's total, estimated from the shards completed
                    bar.total = round(ledger.completed_rows / len(ledger.completed) * len(todo))
                if committer.due(len(ledger.ready)):
                    committer.commit(ledger.take_ready())
        finally:  # a failing stream still commits the shards it completed
            if ledger.ready:
                committer.commit(ledger.take_ready())
    summary.statuses = dict(sorted(committer.statuses.items()))
    summary.model_loads = len(ledger.model_loads)
    if ledger.shards:
        broken = sorted(ledger.shards)
        raise ScoringError(
            f"{len(broken)} shards ended incomplete ({', '.join(broken[:5])}); rerun to score them"
        )
    # A shard without rows sends no record: nothing to commit, and cheap to look at again.
    summary.shards_empty = len(todo) - len(ledger.completed)
