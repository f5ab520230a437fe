"""The loop each Ray Train worker runs: one optimiser step after another over its share of
the global batch, the held-out and verification metrics each epoch, and the checkpoints
that let a run resume with any number of workers."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint
from ray.util.queue import Queue
from torch import nn

from models.artifact import load_artifact
from models.losses import FIQALoss, LossParts, certainty_ratio, true_cosine
from models.presets import get_preset
from models.vit_fiqa import ViTFIQA
from pipeline.augment import augment
from pipeline.class_shard import ClassShard, slice_state, sum_gradients
from pipeline.decode import to_model_input
from pipeline.evaluation.verification import spearman, verification
from pipeline.faults import ExitOnce
from pipeline.storage import StorageOptions, filesystem
from pipeline.training.spec import TrainSpec

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


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


def build_model(spec: TrainSpec, storage: StorageOptions | None) -> ViTFIQA:
    if spec.init_from:
        fs, path = filesystem(spec.init_from, storage)
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


@dataclass(frozen=True)
class Learner:
    """What one worker trains, and how one batch trains it: `fiqa train`'s step, which the
    training benchmark's bare loop runs too."""

    spec: TrainSpec
    network: nn.Module  # the model, or on a Ray Train worker its DDP wrapper
    criterion: FIQALoss  # the margin head over this worker's slice of the class centres
    shard: ClassShard
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]  # network, centres
    generator: torch.Generator  # the augmentations' draws
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def step(
        self, pixels: torch.Tensor, labels: torch.Tensor, lr: float, target=None
    ) -> tuple[LossParts, torch.Tensor]:
        """Train on this worker's rows of a global batch (uint8 pixels) at learning rate
        `lr`: `train_step` on them, augmented."""
        x = to_model_input(pixels).to(self.device, non_blocking=True)
        x = augment(x, self.spec.augmentations, self.generator)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return train_step(
            self.network,
            self.criterion,
            self.shard,
            self.optimizers,
            x,
            labels.to(self.device),
            self.spec.clip_grad_norm,
            self.autocast,
            None if target is None else target.to(self.device),
        )


def learner(
    spec: TrainSpec,
    model: ViTFIQA,
    num_classes: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> Learner:
    """The `Learner` of `spec` for worker `rank` of `world`, training `model` (on `device`,
    by default the CPU)."""
    device = device or torch.device("cpu")
    shard = ClassShard(num_classes, rank, world)
    criterion = shard.loss(
        model.config.fr_dim, margin=spec.loss, alpha=spec.alpha, seed=spec.seed
    ).to(device)
    optimizers = (
        torch.optim.AdamW(parameter_groups(model, spec.weight_decay), lr=spec.lr),
        torch.optim.AdamW(criterion.parameters(), lr=spec.lr, weight_decay=spec.weight_decay),
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(spec.seed * 1000 + rank)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    return Learner(spec, model, criterion, shard, optimizers, generator, device, autocast)


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
    fault: ExitOnce | None = config["fault"]
    progress: Queue = config["progress"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    model = build_model(spec, config["storage"]).to(device)
    trainer = learner(spec, model, config["num_classes"], rank, world, device)
    criterion, shard, autocast = trainer.criterion, trainer.shard, trainer.autocast
    optimizer, head_optimizer = trainer.optimizers
    total_steps = spec.epochs * steps_per_epoch
    warmup_steps = max(1, round(spec.warmup_epochs * steps_per_epoch))
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
            trainer.generator.set_state(rng["augment"])
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
    trainer = replace(trainer, network=ddp)
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
            rng = {"torch": torch.get_rng_state(), "augment": trainer.generator.get_state()}
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
            labels = batch["label"][ok]
            target = batch["target"][ok] if "target" in batch else None
            lr = spec.lr * lr_factor(step, warmup_steps, total_steps)
            parts, grad_norm = trainer.step(batch["pixels"][ok], labels, lr, target)
            step += 1
            images += len(labels)
            if index == 0 and remaining > 1:
                # Throughput leaves out the epoch's first step: the stream's start-up, first
                # allocations and DDP's bucket rebuild.
                started, images = time.perf_counter(), 0
            for name, value in {**parts.scalars(), "grad_norm": grad_norm.item()}.items():
                sums[name] += value
            sums["steps"] += 1
            if fault and rank == 0:
                fault(step)
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
