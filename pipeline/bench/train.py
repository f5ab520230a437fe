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
    the same training step (`Learner.step`: augmentation, forward, margin loss, optimisers) on
    the same images, already decoded in memory, with the same spec. Each measures `steps`
    steps after one warm-up step (the stream's start-up, first allocations, DDP's bucket
    rebuild). Each Ray run gets cores / workers CPUs (so torch threads) per worker.

    The data: WebDataset samples cycling through 1,000 synthetic faces of 50 identities, one
    Ray epoch's worth ((steps + 1) x batch); training cost does not depend on the pixels."""

    from pipeline.formats import get_format
    from pipeline.storage import filesystem
    from pipeline.synth.dataset import SynthSpec, render_identity
    from pipeline.training.loop import build_model, learner
    from pipeline.training.run import fit
    from pipeline.training.spec import TrainSpec

    cores = os.cpu_count() or 1
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

    def spec(workers: int) -> TrainSpec:
        """`fiqa train`'s defaults but for the run's size and where it writes."""
        return TrainSpec(
            data=[data],
            format="wds",
            out=os.path.join(workdir, f"model-{workers}"),
            holdout_fraction=0.0,
            preset=preset,
            epochs=1,
            batch_size=batch_size,
            warmup_epochs=0.0,
            augment=list(augmentations),
            num_workers=workers,
            cpus_per_worker=max(1.0, cores / workers),
            storage_path=os.path.join(workdir, "runs"),
            run_name=f"bench-{workers}-{time.time_ns()}",
        )

    bare = spec(1)
    trainer = learner(bare, build_model(bare, None), len(classes))

    def bare_step(index: int) -> None:
        picked = torch.arange(index * batch_size, (index + 1) * batch_size) % len(pool)
        trainer.step(pixels[picked], labels[picked], bare.lr)

    bare_step(0)
    start = time.perf_counter()
    for index in range(1, steps + 1):
        bare_step(index)
    bare_rate = steps * batch_size / (time.perf_counter() - start)
    log(f"bare loop: {bare_rate:.1f} training images/s ({torch.get_num_threads()} torch threads)")

    connect(num_cpus=2 * cores)  # the extra logical CPUs run Ray Data's decode tasks
    results = {"bare_images_per_s": round(bare_rate, 1)}
    for n in workers:
        epoch = fit(spec(n), say=log).summary["trained"]["epochs"][-1]
        results[f"ray_{n}_workers_images_per_s"] = round(epoch["images_per_s"], 1)
        results[f"ratio_{n}_workers_to_bare"] = round(epoch["images_per_s"] / bare_rate, 3)
        log(f"Ray Train, {n} worker(s): {epoch['images_per_s']:.1f} images/s")
    return {
        "bench": "train",
        "preset": preset,
        "batch_size": batch_size,
        "steps": steps,
        "cores": cores,
        **results,
    }
