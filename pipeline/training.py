"""Fitting ViT-FIQA with Ray Train on sharded data (docs/training.md).

The driver (`fit`) lists the data once (identity and status columns only), maps identities to
class indices (sorted identity strings -> 0..C-1), splits off a held-out fraction of images by
a hash of their id, and hands three Ray datasets to a `TorchTrainer`: `train` and `holdout`
(split across workers) and `eval` (read whole by rank 0 for the per-epoch verification).
Decoding runs in Ray Data CPU tasks, which also give a share of the training images a fresh
degradation every epoch; augmentation runs in torch inside the loop, on the batch's device. The
network is replicated under DDP; the class centres of the margin head are split over the
workers (`pipeline/class_shard.py`). Every epoch (and every N steps) each worker reports a
checkpoint: rank 0 the network, its optimiser, step and history; every rank its slice of the
centres with their optimiser state, and its RNG state. A rerun with the same run name,
or a restart after a worker failure, continues from the latest checkpoint, with any number of
workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue
from safetensors.torch import save as save_safetensors
from torch import nn

from models.artifact import load_artifact, save_artifact
from models.losses import FIQALoss, LossParts, certainty_ratio, true_cosine
from models.presets import get_preset
from models.vit_fiqa import ViTFIQA
from pipeline import synth, teacher
from pipeline.augment import UTILITY_PRESERVING, augment
from pipeline.class_shard import ClassShard, slice_state, sum_gradients
from pipeline.cluster import connect
from pipeline.datasource import read_samples
from pipeline.decode import DecodeOptions, decode_batch, to_model_input
from pipeline.errors import FiqaError
from pipeline.evaluation.fr_models import FrModelSpec
from pipeline.formats import get_format
from pipeline.status import OK
from pipeline.storage import StorageOptions, arrow_filesystem, filesystem, parse_uri
from pipeline.verification import spearman, verification

log = logging.getLogger(__name__)

IDENTITIES_FILE = "identities.json"
CENTRES_FILE = "centres.safetensors"  # beside the artifact, for fine-tuning; scoring needs none
STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
# Test-only fault injection (docs/training.md): rank 0 calls os._exit(1) once at this step;
# the marker file records that it happened, so the restarted run goes on.
FAULT_STEP_ENV = "FIQA_TRAIN_FAULT_AT_STEP"
FAULT_MARKER_ENV = "FIQA_TRAIN_FAULT_MARKER"
FAULT_DELAY_S = 5.0
# The chance that a training image gets a fresh degradation each epoch (`degraded`), in a
# run without a teacher; a teacher's degraded images are its labelled copies.
DEGRADE = 0.5
TEACHER_DIR = "teacher"  # in the run's folder: the teacher's descriptors and labels


class TrainingError(FiqaError, RuntimeError):
    """A training run that cannot start (no data) or did not finish."""


@dataclass(frozen=True)
class DataSpec:
    format: str
    uris: tuple[str, ...]
    storage: StorageOptions | None = None
    format_options: dict = field(default_factory=dict)

    def shards(self, shuffle_seed: int | None = None) -> list[tuple[str, list]]:
        """(dataset URI, its shards) for each dataset; with a seed, the shards in a shuffled
        order."""
        fmt = get_format(self.format, **self.format_options)
        listed = []
        for uri in self.uris:
            fs, root = filesystem(uri, self.storage)
            shards = fmt.list_shards(fs, root)
            if shuffle_seed is not None:
                random.Random(shuffle_seed).shuffle(shards)
            listed.append((uri, shards))
        return listed

    def read(self, shuffle_seed: int | None = None) -> ray.data.Dataset:
        """All samples; with a seed, the shards (so the read tasks) in a shuffled order, which
        mixes identities across blocks without materialising the dataset."""
        datasets = [
            read_samples(
                self.format,
                uri,
                storage=self.storage,
                format_options=self.format_options,
                shards=shards,
            )
            for uri, shards in self.shards(shuffle_seed)
        ]
        return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


@dataclass(frozen=True)
class TrainSpec:
    """Everything a run needs; built from `jobs.train.TrainConfig`."""

    train: DataSpec
    out: str
    eval: DataSpec | None = None
    holdout_fraction: float = 0.02
    preset: str = "vit-fiqa-cpu"
    mode: str = "token"
    init_from: str | None = None
    loss: str = "cosface"
    alpha: float = 10.0
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    clip_grad_norm: float = 5.0
    augmentations: tuple[str, ...] = ()
    degrade: float | None = None  # None: DEGRADE without a teacher, 0 with one
    teacher: FrModelSpec | None = None  # None: the CR of the FR head being trained
    teacher_copies: int = 1  # degraded copies of each image the teacher labels
    shuffle_buffer: int = 4096
    num_workers: int | None = None  # None: one per GPU of the cluster, else 1 (`scaled`)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"
    run_name: str = "fiqa-train"
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 3
    max_failures: int = 2
    seed: int = 0
    storage: StorageOptions | None = None  # for storage_path, out and init_from


# ---------------------------------------------------------------- driver: data


def is_holdout(image_id: str, fraction: float) -> bool:
    """Stable membership of the held-out split: the same images on every run and worker."""
    return zlib.crc32(image_id.encode()) % 10_000 < fraction * 10_000


@dataclass
class DataSummary:
    identities: list[str]  # class index -> identity string
    train_rows: int
    holdout_rows: int
    skipped: dict[str, int]  # status -> rows not used (read failures, no identity)


def summarise(ds: ray.data.Dataset, holdout_fraction: float) -> DataSummary:
    """One streaming pass over image_id, identity and status."""
    identities: set[str] = set()
    skipped: Counter[str] = Counter()
    train_rows = holdout_rows = 0
    columns = ds.select_columns(["image_id", "identity", "status"])
    for batch in columns.iter_batches(batch_format="pyarrow", batch_size=65536):
        for image_id, identity, status in zip(
            *(batch.column(c).to_pylist() for c in ("image_id", "identity", "status")),
            strict=True,
        ):
            if status != OK or identity is None:
                skipped[status if status != OK else "no_identity"] += 1
                continue
            identities.add(identity)
            if is_holdout(image_id, holdout_fraction):
                holdout_rows += 1
            else:
                train_rows += 1
    return DataSummary(sorted(identities), train_rows, holdout_rows, dict(skipped))


def prepare_batch(
    batch: dict[str, np.ndarray],
    classes: dict[str, int],
    options: DecodeOptions,
    holdout: bool | None,
    fraction: float,
    degrade: float,
    targets: teacher.Targets | None = None,
    copies: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Ray Data UDF: the batch's readable, labelled rows of the wanted split (`holdout`:
    only held-out rows, only the others, or None: all), decoded, with only what the loop
    needs (pixels, label, ok), a share `degrade` of them degraded (`degraded`). With teacher
    `targets`, each row is followed by its `copies` degraded copies, and `target` holds the
    teacher's CR of each (a row without one is not ok). Rows are chosen before decoding,
    which is the costly part."""
    wanted = (batch["status"] == OK) & np.array([i is not None for i in batch["identity"]])
    if holdout is not None:
        split = np.array([is_holdout(i, fraction) for i in batch["image_id"]], dtype=bool)
        wanted &= split == holdout
    batch = {name: column[wanted] for name, column in batch.items()}
    decoded = decode_batch(batch, options)
    if degrade:
        degraded(decoded["pixels"], decoded["status"] == OK, degrade)
    labels = np.array([classes.get(i, -1) for i in batch["identity"]], dtype=np.int64)
    ok = (decoded["status"] == OK) & (labels >= 0)
    if targets is None:
        return {"pixels": decoded["pixels"], "label": labels, "ok": ok.astype(bool)}
    pixels, rows, copy = teacher.with_copies(decoded["pixels"], batch["image_id"], copies, seed, ok)
    target = targets(batch["shard"][rows], batch["image_id"][rows], copy)
    ok = ok[rows] & ~np.isnan(target)
    return {"pixels": pixels, "label": labels[rows], "ok": ok, "target": target}


def degraded(pixels: np.ndarray, ok: np.ndarray, probability: float) -> None:
    """In place: each readable image, with `probability`, gets one pixel-level degradation of
    the synthetic data's catalogue (`synth.sample_degradation`, kind and severity uniform).

    The CR target is computed online by the FR head, which after a few epochs has fitted the
    images it trains on, degraded or not, so their CR no longer shows what a degradation costs.
    Drawn anew every epoch, a degradation is one the head has not fitted. The draws are not
    seeded: they are made where Ray Data decodes, whose order is not reproducible either."""
    policy = synth.DegradationPolicy(
        enabled=synth.PIXEL_DEGRADATIONS, probability=probability, mix=(1.0,)
    )
    rng = np.random.default_rng()
    for i in np.flatnonzero(ok):
        pixels[i] = synth.degrade(pixels[i], policy.sample(rng))


def labelled(
    ds: ray.data.Dataset,
    classes: dict[str, int],
    holdout: bool | None,
    fraction: float,
    degrade: float = 0.0,
    plan: teacher.Plan | None = None,
) -> ray.data.Dataset:
    """Rows of readable images (of the wanted split), decoded, labelled and `degraded`; with
    a teacher `plan`, with its copies and targets (`prepare_batch`)."""
    targets = {}
    if plan:
        targets = {
            "targets": teacher.Targets(plan.root, plan.storage),
            "copies": plan.copies,
            "seed": plan.seed,
        }
    return ds.map_batches(
        prepare_batch,
        batch_format="numpy",
        fn_kwargs={
            "classes": classes,
            "options": DecodeOptions(),
            "holdout": holdout,
            "fraction": fraction,
            "degrade": degrade,
            **targets,
        },
    )


# ---------------------------------------------------------------- worker: training


def parameter_groups(model: ViTFIQA, weight_decay: float) -> list[dict]:
    """No decay for the model's `no_weight_decay()` (pos_embed, qs_token), norms and biases."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name in skip or p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to 1 over warmup_steps, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_model(spec: TrainSpec) -> ViTFIQA:
    if spec.init_from:
        fs, path = filesystem(spec.init_from, spec.storage)
        return load_artifact(path, fs=fs).model.train()
    torch.manual_seed(spec.seed)  # the same initial weights on every worker
    return ViTFIQA(get_preset(spec.preset, mode=spec.mode))


def train_step(
    model: nn.Module,
    criterion: FIQALoss,
    shard: ClassShard,
    optimizers: tuple[torch.optim.Optimizer, ...],
    x: torch.Tensor,
    labels: torch.Tensor,
    clip_grad_norm: float,
    autocast=contextlib.nullcontext,
    target: torch.Tensor | None = None,
) -> tuple[LossParts, torch.Tensor]:
    """One optimiser step on the global batch (this worker's rows are `x`; `target`: a
    teacher's CR of them, else the FR head's own CR is the target): the loss parts,
    identical on every worker, and the gradient norm before clipping. The margin head runs in
    float32 outside autocast: s = 64 logits over many classes need the precision."""
    with autocast():
        embedding, quality = model(x)
    given = () if target is None else (target,)
    parts = criterion(*shard.gather(embedding.float(), quality.float(), labels, *given))
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    (parts.total / shard.world).backward()
    grad_norm = shard.clip_grad_norm_(model.parameters(), criterion.parameters(), clip_grad_norm)
    for optimizer in optimizers:
        optimizer.step()
    return parts, grad_norm


@torch.no_grad()
def holdout_metrics(
    model: ViTFIQA, criterion: FIQALoss, shard: ClassShard, batches, device: torch.device, autocast
) -> dict[str, float]:
    """The quality target (a teacher's CR, else the CR with the current centres, margin-free,
    eval mode) against predicted quality. Every worker embeds its part of the held-out
    images; the CR of each gathered batch needs every worker's centres, so all workers run
    this in step."""
    qualities, crs = [], []
    for batch in batches:
        ok = batch["ok"]
        with autocast():
            embedding, quality = model(to_model_input(batch["pixels"][ok]).to(device))
        if "target" in batch:
            quality, cr = shard.gather(quality.float(), batch["target"][ok].to(device))
            qualities.append(quality.cpu())
            crs.append(cr.cpu())
            continue
        labels = batch["label"][ok].to(device)
        embedding, quality, labels = shard.gather(embedding.float(), quality.float(), labels)
        centres, reduce = criterion.centres, criterion.reduce
        cos = centres.cosine(embedding)
        owned, local = centres.local_target(labels)
        cr = certainty_ratio(cos, true_cosine(cos, owned, local, reduce), owned, local, reduce)
        qualities.append(quality.cpu())
        crs.append(cr.cpu())
    if not qualities:
        return {}
    q, cr = torch.cat(qualities).numpy(), torch.cat(crs).numpy()
    return {
        "holdout_spearman": spearman(q, cr),
        "holdout_cr_mean": float(cr.mean()),
        "holdout_cr_std": float(cr.std()),
        "holdout_images": float(len(q)),
    }


@torch.no_grad()
def eval_metrics(
    model: ViTFIQA, batches, device: torch.device, autocast, seed: int
) -> dict[str, float]:
    embeddings, labels = [], []
    for batch in batches:
        ok = batch["ok"]
        if not ok.any():
            continue
        with autocast():
            embedding, _ = model(to_model_input(batch["pixels"][ok]).to(device))
        embeddings.append(embedding.float().cpu())
        labels.append(batch["label"][ok])
    if not embeddings:
        return {}
    return verification(torch.cat(embeddings), torch.cat(labels).numpy(), seed=seed)


def centres_file(rank: int) -> str:
    return f"centres-{rank}.pt"


def read_checkpoint_file(checkpoint: Checkpoint, name: str) -> Any:
    """One file of a checkpoint (None if absent), fetched alone: a worker reads only the
    centre slices it needs, never the whole checkpoint."""
    path = f"{checkpoint.path}/{name}"
    fs = checkpoint.filesystem
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_file(path) as f:
        return torch.load(io.BytesIO(f.readall()), map_location="cpu", weights_only=True)


def train_loop(config: dict[str, Any]) -> None:
    """Per-worker loop (Ray Train's train_loop_per_worker)."""
    spec: TrainSpec = config["spec"]
    steps_per_epoch: int = config["steps_per_epoch"]
    fault: tuple[int, str] | None = config["fault"]
    progress: Queue = config["progress"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )

    model = build_model(spec).to(device)
    shard = ClassShard(config["num_classes"], rank, world)
    criterion = shard.loss(
        model.config.fr_dim, margin=spec.loss, alpha=spec.alpha, seed=spec.seed
    ).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, spec.weight_decay), lr=spec.lr)
    head_optimizer = torch.optim.AdamW(
        criterion.parameters(), lr=spec.lr, weight_decay=spec.weight_decay
    )
    total_steps = spec.epochs * steps_per_epoch
    warmup_steps = max(1, round(spec.warmup_epochs * steps_per_epoch))
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.seed * 1000 + rank)
    torch.manual_seed(spec.seed * 1000 + rank)  # masking and drop-path differ per worker
    step, history, resumed = 0, [], []

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = read_checkpoint_file(checkpoint, STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, resumed = state["step"], state["history"], state["resumed"]
        slices = [
            read_checkpoint_file(checkpoint, centres_file(r))
            for r in shard.owners(state["workers"])
        ]
        shard.load(slices, criterion, head_optimizer)
        rng = read_checkpoint_file(checkpoint, f"rng-{rank}.pt")
        if rng is not None:  # absent for ranks the earlier run did not have
            torch.set_rng_state(rng["torch"])
            generator.set_state(rng["augment"])
        resumed = [*resumed, step]
        if rank == 0:
            resliced = (
                f", class centres re-sliced from {state['workers']} workers"
                if state["workers"] != world
                else ""
            )
            progress.put(f"resumed from step {step} (epoch {step // steps_per_epoch}){resliced}")

    ddp = ray.train.torch.prepare_model(model, move_to_device=False)
    if world > 1:
        ddp.register_comm_hook(None, sum_gradients)
    per_worker_batch = spec.batch_size // world
    train_shard = ray.train.get_dataset_shard("train")

    def report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "history": history,
                    "resumed": resumed,
                    "workers": world,
                }
                torch.save(state, os.path.join(directory, STATE_FILE))
                with open(os.path.join(directory, HISTORY_FILE), "w") as f:
                    json.dump(history, f)
            torch.save(
                slice_state(criterion, head_optimizer),
                os.path.join(directory, centres_file(rank)),
            )
            rng = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
            torch.save(rng, os.path.join(directory, f"rng-{rank}.pt"))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))

    while step < total_steps:
        epoch = step // steps_per_epoch
        model.train()
        sums, images, skipped, started = Counter(), 0, 0, time.perf_counter()
        remaining = steps_per_epoch - step % steps_per_epoch
        batches = train_shard.iter_torch_batches(
            batch_size=per_worker_batch,
            drop_last=True,
            local_shuffle_buffer_size=spec.shuffle_buffer,
            local_shuffle_seed=spec.seed * 1000 + epoch * 10 + rank,
        )
        for index, batch in enumerate(islice(batches, remaining)):
            ok = batch["ok"]
            skipped += int((~ok).sum())
            x = to_model_input(batch["pixels"][ok]).to(device, non_blocking=True)
            x = augment(x, spec.augmentations, generator)
            labels = batch["label"][ok].to(device)
            target = batch["target"][ok].to(device) if "target" in batch else None
            lr = spec.lr * lr_factor(step, warmup_steps, total_steps)
            for group in (*optimizer.param_groups, *head_optimizer.param_groups):
                group["lr"] = lr
            parts, grad_norm = train_step(
                ddp,
                criterion,
                shard,
                (optimizer, head_optimizer),
                x,
                labels,
                spec.clip_grad_norm,
                autocast,
                target,
            )
            step += 1
            images += len(labels)
            if index == 0 and remaining > 1:
                # Throughput leaves out the epoch's first step: the stream's start-up, first
                # allocations and DDP's bucket rebuild.
                started, images = time.perf_counter(), 0
            for name, value in {**parts.scalars(), "grad_norm": grad_norm.item()}.items():
                sums[name] += value
            sums["steps"] += 1
            if fault and rank == 0 and step == fault[0] and not os.path.exists(fault[1]):
                open(fault[1], "w").close()
                time.sleep(FAULT_DELAY_S)  # let the controller register earlier reports
                os._exit(1)
            every = spec.checkpoint_every_steps
            if every and step % every == 0 and step % steps_per_epoch:
                report({"step": step, "epoch": epoch, "mid_epoch": True})

        seconds = time.perf_counter() - started
        metrics = epoch_metrics(sums, images, skipped, seconds, world, device)
        lr = spec.lr * lr_factor(step, warmup_steps, total_steps)
        metrics.update(epoch=epoch + 1, step=step, lr=lr)
        model.eval()
        if world > 1:  # evaluate rank 0's batch-norm statistics, which the artifact will hold
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        if "holdout" in config["evaluate"]:
            batches = ray.train.get_dataset_shard("holdout").iter_torch_batches(batch_size=256)
            metrics.update(holdout_metrics(model, criterion, shard, batches, device, autocast))
        if rank == 0:
            if "eval" in config["evaluate"]:
                batches = ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=256)
                metrics.update(eval_metrics(model, batches, device, autocast, spec.seed))
            history.append(metrics)
            progress.put(format_epoch(metrics, spec.epochs))
        report(metrics)


def epoch_metrics(
    sums: Counter, images: int, skipped: int, seconds: float, world: int, device: torch.device
) -> dict[str, float]:
    """Per-step means of the loss parts, averaged over workers; images/s summed over them."""
    steps = max(1, sums.pop("steps", 0))
    names = sorted(sums)
    values = [sums[n] / steps for n in names] + [images / seconds, skipped]
    local = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(local)
        local[: len(names)] /= world
    values = local.tolist()
    metrics = dict(zip(names, values[: len(names)], strict=True))
    metrics.update(images_per_s=values[-2], skipped=values[-1])
    return metrics


def format_epoch(m: dict[str, float], epochs: int) -> str:
    line = (
        f"epoch {m['epoch']}/{epochs} step {m['step']}: loss {m.get('loss', math.nan):.3f} "
        f"(ce {m.get('ce', math.nan):.3f}, quality {m.get('quality_loss', math.nan):.3f}) "
        f"acc {m.get('accuracy', math.nan):.3f} cr {m.get('cr_mean', math.nan):.3f}"
        f"+-{m.get('cr_std', math.nan):.3f} lr {m['lr']:.2e} {m['images_per_s']:.0f} img/s"
    )
    if "holdout_spearman" in m:
        line += f" | holdout spearman {m['holdout_spearman']:.3f}"
    if "verification_accuracy" in m:
        line += (
            f" | verification acc {m['verification_accuracy']:.3f} "
            f"TAR@FMR1e-3 {m['tar_at_fmr']:.3f}"
        )
    return line


# ---------------------------------------------------------------- driver: the run


@dataclass
class TrainResult:
    model_id: str
    out: str
    run_path: str
    summary: dict


def fault_injection() -> tuple[int, str] | None:
    step = os.environ.get(FAULT_STEP_ENV)
    if not step:
        return None
    marker = os.environ.get(FAULT_MARKER_ENV)
    if not marker:
        raise TrainingError(f"{FAULT_STEP_ENV} needs {FAULT_MARKER_ENV} (a marker file path)")
    return int(step), marker


def run_config(spec: TrainSpec) -> RunConfig:
    location = parse_uri(spec.storage_path)
    storage_fs = None
    if location.protocol != "file":
        storage_fs, _ = arrow_filesystem(spec.storage_path, spec.storage)
    return RunConfig(
        name=spec.run_name,
        storage_path=location.path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
    )


def scaled(spec: TrainSpec, resources: dict[str, float]) -> TrainSpec:
    """`spec` with its automatic scaling settled for a cluster of `resources`: one worker per
    GPU, each with one GPU, when there are GPUs; else one CPU worker."""
    gpus = resources.get("GPU", 0)
    per_worker = spec.gpus_per_worker
    if per_worker is None:
        per_worker = 1.0 if gpus >= 1 else 0.0
    workers = spec.num_workers
    if workers is None:
        workers = max(1, int(gpus // per_worker)) if per_worker else 1
    if spec.batch_size % workers:
        raise TrainingError(
            f"batch_size {spec.batch_size} is not divisible by {workers} workers: "
            "give --batch-size or --num-workers"
        )
    return replace(spec, num_workers=workers, gpus_per_worker=per_worker)


def fitted_batch(spec: TrainSpec, train_rows: int) -> TrainSpec:
    """`spec` with a global batch no larger than the `train_rows` training images (rounded
    down to a multiple of the workers), said once as a warning."""
    if not spec.num_workers <= train_rows < spec.batch_size:
        return spec
    batch = train_rows - train_rows % spec.num_workers
    log.warning(
        "the global batch of %d is larger than the %d training images: training with "
        "batches of %d (--batch-size sets it)",
        spec.batch_size,
        train_rows,
        batch,
    )
    return replace(spec, batch_size=batch)


@contextlib.contextmanager
def relayed(queue: Queue, say: Callable[[str], None]) -> Iterator[None]:
    """Hands the lines rank 0 puts on `queue` to `say` while the run lasts: the workers'
    one channel to the terminal (Ray's relay of their output is off under a command log)."""
    done = threading.Event()

    def pump() -> None:
        while not (done.is_set() and queue.empty()):
            with contextlib.suppress(Empty):
                say(queue.get(timeout=0.5))

    thread = threading.Thread(target=pump, name="training-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        queue.shutdown()


def fit(spec: TrainSpec, say: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) training and write the artifact to `spec.out`; `say` gets one line
    per epoch (and one on resuming, and the teacher's progress)."""
    started = time.time()
    check_init(spec)
    degrade = fresh_degrade(spec)
    connect()
    spec = scaled(spec, ray.cluster_resources())
    train_ds = spec.train.read(shuffle_seed=spec.seed)
    data = summarise(train_ds, spec.holdout_fraction)
    if not data.identities:
        raise TrainingError(f"{', '.join(spec.train.uris)}: no readable labelled images")
    classes = {identity: i for i, identity in enumerate(data.identities)}
    plan = teacher_plan(spec, classes)
    rows_per_image = 1 + (plan.copies if plan else 0)
    train_rows = data.train_rows * rows_per_image
    spec = fitted_batch(spec, train_rows)
    steps_per_epoch = (train_rows // spec.num_workers) // (spec.batch_size // spec.num_workers)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{train_rows} training images are fewer than one global batch of "
            f"{spec.batch_size}: lower --batch-size"
        )
    if len(data.identities) < spec.num_workers:
        raise TrainingError(
            f"{len(data.identities)} identities cannot be split over {spec.num_workers} "
            "workers (each holds a slice of the class centres): lower --num-workers"
        )
    log.info(
        "%d identities, %d training and %d held-out images, %d steps per epoch, skipped %s",
        len(classes),
        data.train_rows,
        data.holdout_rows,
        steps_per_epoch,
        data.skipped or "none",
    )
    if plan:
        shards = [(uri, shard) for uri, listed in spec.train.shards() for shard in listed]
        try:
            labelled_rows = teacher.label(plan, shards, say)
        except teacher.TeacherError as e:
            raise TrainingError(str(e)) from e
        say(f"teacher {plan.teacher.label}: CR of {labelled_rows} images and copies")
    datasets = {"train": labelled(train_ds, classes, False, spec.holdout_fraction, degrade, plan)}
    if data.holdout_rows:
        datasets["holdout"] = labelled(train_ds, classes, True, spec.holdout_fraction, plan=plan)
    eval_identities: list[str] = []
    if spec.eval:
        eval_ds = spec.eval.read()
        eval_identities = summarise(eval_ds, 0.0).identities
        eval_classes = {identity: i for i, identity in enumerate(eval_identities)}
        datasets["eval"] = labelled(eval_ds, eval_classes, None, 0.0)

    progress = Queue(actor_options={"num_cpus": 0})  # rank 0's lines for the terminal
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "spec": spec,
            "steps_per_epoch": steps_per_epoch,
            "num_classes": len(classes),
            "fault": fault_injection(),
            "evaluate": sorted(set(datasets) - {"train"}),
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=bool(spec.gpus_per_worker),
            resources_per_worker={
                "CPU": spec.cpus_per_worker,
                **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {}),
            },
        ),
        torch_config=TorchConfig(backend="nccl" if spec.gpus_per_worker else "gloo"),
        run_config=run_config(spec),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train", "holdout"]),
    )
    try:
        with relayed(progress, say):
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainingError(
            f"training run {spec.run_name} failed (rerun with the same run name to resume "
            f"from its last checkpoint): {e}"
        ) from e
    state = read_checkpoint_file(result.checkpoint, STATE_FILE)
    model = build_model(spec)
    model.load_state_dict(state["model"])
    summary = {
        "trained": {
            "spec": spec_summary(spec),
            "classes": len(classes),
            "identities_file": IDENTITIES_FILE,
            "centres_file": CENTRES_FILE,
            "train_images": data.train_rows,
            "teacher_rows_per_image": rows_per_image if plan else None,
            "holdout_images": data.holdout_rows,
            "skipped_at_read": data.skipped,
            "eval_identities": len(eval_identities),
            "steps": state["step"],
            "steps_per_epoch": steps_per_epoch,
            "resumed_from_steps": state["resumed"],
            "epochs": state["history"],
            "wall_seconds": time.time() - started,
            "run_path": result.path,
        }
    }
    fs, out = filesystem(spec.out, spec.storage)
    model_id = save_artifact(model.eval(), out, preset=spec.preset, training=summary, fs=fs)
    with fs.open(f"{out.rstrip('/')}/{IDENTITIES_FILE}", "wb") as f:
        f.write(json.dumps(data.identities).encode())
    centres = [
        read_checkpoint_file(result.checkpoint, centres_file(r))["weight"]
        for r in range(state["workers"])
    ]
    with fs.open(f"{out.rstrip('/')}/{CENTRES_FILE}", "wb") as f:
        f.write(save_safetensors({"weight": torch.cat(centres).contiguous()}))
    return TrainResult(model_id, parse_uri(spec.out).uri, result.path, summary)


def fresh_degrade(spec: TrainSpec) -> float:
    """The run's `degrade`. A teacher's CR holds only for the pixels it measured: its own
    degraded copies, augmented at most by what leaves FR utility as it was."""
    if spec.teacher is None:
        return DEGRADE if spec.degrade is None else spec.degrade
    if spec.degrade:
        raise TrainingError(
            "fresh degradations have no teacher CR: with a teacher, its degraded copies "
            "(teacher_copies) replace them; leave degrade unset or 0"
        )
    changing = [a for a in spec.augmentations if a not in UTILITY_PRESERVING]
    if changing:
        raise TrainingError(
            f"augmentation {', '.join(changing)} changes what the teacher measured: with a "
            f"teacher use only {', '.join(UTILITY_PRESERVING)}"
        )
    return 0.0


def teacher_plan(spec: TrainSpec, classes: dict[str, int]) -> teacher.Plan | None:
    """Where and how the run's teacher labels its training images (None: no teacher)."""
    if spec.teacher is None:
        return None
    root = f"{spec.storage_path.rstrip('/')}/{spec.run_name}/{TEACHER_DIR}"
    return teacher.Plan(
        teacher=spec.teacher,
        format=spec.train.format,
        format_options=spec.train.format_options,
        data_storage=spec.train.storage,
        storage=spec.storage,
        classes=classes,
        copies=spec.teacher_copies,
        seed=spec.seed,
        root=root,
        gpus=1.0 if spec.gpus_per_worker and spec.teacher.resolved_kind == "artifact" else 0.0,
    )


def check_init(spec: TrainSpec) -> None:
    """An initial artifact must have the architecture the run asks for."""
    if not spec.init_from:
        return
    fs, path = filesystem(spec.init_from, spec.storage)
    artifact = load_artifact(path, fs=fs)
    if artifact.model.config != get_preset(spec.preset, mode=spec.mode):
        raise TrainingError(
            f"init_from {spec.init_from}: its architecture ({artifact.preset}, "
            f"{artifact.model.config.mode} mode) is not {spec.preset} in {spec.mode} mode"
        )


def spec_summary(spec: TrainSpec) -> dict:
    """The spec as JSON, without storage options (they may carry credentials)."""
    out = asdict(spec)
    out.pop("storage")
    if spec.teacher:
        out["teacher"] = spec.teacher.model_dump()
    for name in ("train", "eval"):
        if out[name]:
            out[name].pop("storage")
    return out
