"""`fiqa bench train`: steady-state training images/s of `fiqa train`, against a bare loop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from pipeline import decode
from pipeline.cluster import connect


def bench_train(
    preset: str = "vit-fiqa-cpu",
    *,
    batch_size: int = 32,
    steps: int = 300,
    workers: tuple[int, ...] = (1, 2),
    augmentations: tuple[str, ...] = ("flip", "photometric", "blur", "cutout"),
    workdir: str,
    log: Callable[[str], None] = print,
) -> dict:
    """Steady-state training images/s of `fiqa train` (Ray Train, Ray Data input, DDP and the
    class-sharded head) with each worker count, against a bare single-process loop running
    the same training step on the same images, already decoded in memory, with the same model,
    batch and augmentations. Each measures `steps` steps after one warm-up step (the stream's
    start-up, first allocations, DDP's bucket rebuild). Each Ray run gets cores / workers CPUs
    (so torch threads) per worker.

    The data: WebDataset samples cycling through 1,000 synthetic faces of 50 identities, one
    Ray epoch's worth ((steps + 1) x batch); training cost does not depend on the pixels."""

    from models.vit_fiqa import create_model
    from pipeline.augment import augment
    from pipeline.class_shard import ClassShard
    from pipeline.formats import get_format
    from pipeline.storage import filesystem
    from pipeline.synthetic_dataset import SynthSpec, render_identity
    from pipeline.training import DataSpec, TrainSpec, fit, parameter_groups, train_step

    faces = SynthSpec(identities=50, per_identity=20)
    pool = [face for i in range(faces.identities) for face in render_identity(faces, i)]
    images = (steps + 1) * batch_size
    fs, data = filesystem(f"{workdir}/data")
    with get_format("wds").writer(fs, data, shard_size=1000) as writer:
        for n in range(images):
            identity, jpeg, _ = pool[n % len(pool)]
            writer.write(f"img{n:08d}", identity, jpeg, "jpg")
    log(f"{images} images ({len(pool)} distinct faces), preset {preset}, batch {batch_size}")

    classes = {k: i for i, k in enumerate(sorted({identity for identity, _, _ in pool}))}
    pixels = torch.as_tensor(
        decode.decode_batch({"image": [jpeg for _, jpeg, _ in pool]})["pixels"]
    )
    labels = torch.tensor([classes[identity] for identity, _, _ in pool])
    model = create_model(preset).train()
    shard = ClassShard(len(classes))
    criterion = shard.loss(model.config.fr_dim)
    optimizers = (
        torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3),
        torch.optim.AdamW(criterion.parameters(), lr=1e-3, weight_decay=0.05),
    )
    generator = torch.Generator().manual_seed(0)

    def bare_step(index: int) -> None:
        picked = torch.arange(index * batch_size, (index + 1) * batch_size) % len(pool)
        x = augment(decode.to_model_input(pixels[picked]), augmentations, generator)
        train_step(model, criterion, shard, optimizers, x, labels[picked], 5.0)

    bare_step(0)
    start = time.perf_counter()
    for index in range(1, steps + 1):
        bare_step(index)
    bare = steps * batch_size / (time.perf_counter() - start)
    log(f"bare loop: {bare:.1f} training images/s ({torch.get_num_threads()} torch threads)")

    cores = os.cpu_count() or 1
    connect(num_cpus=2 * cores)  # the extra logical CPUs run Ray Data's decode tasks
    results = {"bare_images_per_s": round(bare, 1)}
    for n in workers:
        spec = TrainSpec(
            train=DataSpec("wds", (data,)),
            out=os.path.join(workdir, f"model-{n}"),
            holdout_fraction=0.0,
            preset=preset,
            epochs=1,
            batch_size=batch_size,
            warmup_epochs=0.0,
            augmentations=augmentations,
            num_workers=n,
            cpus_per_worker=max(1.0, cores / n),
            storage_path=os.path.join(workdir, "runs"),
            run_name=f"bench-{n}-{time.time_ns()}",
        )
        epoch = fit(spec).summary["trained"]["epochs"][-1]
        results[f"ray_{n}_workers_images_per_s"] = round(epoch["images_per_s"], 1)
        results[f"ratio_{n}_workers_to_bare"] = round(epoch["images_per_s"] / bare, 3)
        log(f"Ray Train, {n} worker(s): {epoch['images_per_s']:.1f} images/s")
    return {
        "bench": "train",
        "preset": preset,
        "batch_size": batch_size,
        "steps": steps,
        "cores": cores,
        **results,
    }
