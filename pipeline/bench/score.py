"""`fiqa bench score`: `fiqa score` with its defaults, against a bare loop on the same images."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.bench.measure import ProcessPeakMemory
from pipeline.catalog import CatalogConfig

if TYPE_CHECKING:
    from pipeline.scoring import ScoringPlan


def bench_score(
    plan_for: Callable[[str, str, CatalogConfig], ScoringPlan],
    images: int = 64_000,
    preset: str = "vit-fiqa-cpu",
    *,
    shard_size: int = 1000,
    baseline: bool = True,
    workdir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """`fiqa score` as a user runs it against a bare single-process loop (read, decode,
    preprocess, model; on the GPU in bf16 when there is one) on the same images and model,
    plus peak memory of the driver and of a scorer actor. `plan_for(model, data, catalog)`
    gives the scoring plan: the verb's own settings, so nothing here is bench-only.

    The dataset is `images` WebDataset samples cycling through 500 distinct synthetic faces
    (scoring cost does not depend on the pixels; rendering 100k faces would dominate)."""
    import resource
    import tempfile

    import ray

    from models.artifact import load_artifact, save_artifact
    from models.vit_fiqa import create_model
    from pipeline.decode import DecodeOptions, decode_image, to_model_input
    from pipeline.formats import get_format
    from pipeline.scoring import score
    from pipeline.storage import filesystem
    from pipeline.synth.dataset import SynthSpec, render_identity

    work = workdir or tempfile.mkdtemp(prefix="fiqa-bench-score-")
    spec = SynthSpec(identities=25, per_identity=20)
    pool = [data for i in range(spec.identities) for _, data, _ in render_identity(spec, i)]
    fs, data = filesystem(f"{work}/data")
    with get_format("wds").writer(fs, data, shard_size=shard_size) as writer:
        for n in range(images):
            writer.write(f"img{n:08d}", f"id{n % 997:04d}", pool[n % len(pool)], "jpg")
    model_dir = f"{work}/model"
    save_artifact(create_model(preset), model_dir, preset=preset)
    catalog = CatalogConfig(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{work}/cat.db",
            "warehouse": f"file://{work}/warehouse",
        }
    )
    plan = plan_for(model_dir, data, catalog)
    log(
        f"{images} images in {-(-images // shard_size)} shards, preset {preset}, "
        f"batch {plan.batch_size}, commit every {plan.commit_every} shards"
    )
    started_ray = not ray.is_initialized()
    with ProcessPeakMemory("QualityScorer") as scorer:
        summary = score(plan, on_commit=log)
    if started_ray:  # the bare loop gets the machine to itself, as the verb did
        ray.shutdown()
    pipeline_rate = summary.images_per_s
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(
        f"fiqa score: {pipeline_rate:.1f} images/s ({summary.seconds:.1f} s, "
        f"{len(summary.snapshots)} commits, {summary.scorers}), driver peak RSS "
        f"{driver_mib:.0f} MiB, scorer actor peak RSS {scorer.peak_mib:.0f} MiB"
    )
    result = {
        "bench": "score",
        "images": images,
        "shards": summary.shards_total,
        "preset": preset,
        "batch_size": plan.batch_size,
        "commit_every": plan.commit_every,
        "commits": len(summary.snapshots),
        "scorers": summary.scorers,
        "pipeline_images_per_s": round(pipeline_rate, 1),
        "pipeline_seconds": round(summary.seconds, 1),
        "driver_peak_rss_mib": round(driver_mib, 1),
        "scorer_peak_rss_mib": round(scorer.peak_mib, 1),
    }
    if not baseline:
        return result

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_artifact(model_dir, map_location=device).model
    options = DecodeOptions()
    fmt, stages = get_format("wds"), Counter()
    start = time.perf_counter()
    pending: list[np.ndarray] = []

    def run_model() -> None:
        t = time.perf_counter()
        x = to_model_input(torch.as_tensor(np.stack(pending)).to(device), options)
        stages["preprocess"] += time.perf_counter() - t
        t = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            model(x)[1].float().cpu()
        stages["model"] += time.perf_counter() - t
        pending.clear()

    for shard in fmt.list_shards(fs, data):
        rows = fmt.read_shard(fs, data, shard)
        while True:
            t = time.perf_counter()
            row = next(rows, None)
            stages["read"] += time.perf_counter() - t
            if row is None:
                break
            t = time.perf_counter()
            decoded = decode_image(row["image"], options)
            stages["decode"] += time.perf_counter() - t
            pending.append(decoded.pixels)
            if len(pending) == plan.batch_size:
                run_model()
    if pending:
        run_model()
    bare_seconds = time.perf_counter() - start
    bare_rate = images / bare_seconds
    shares = {k: round(v / bare_seconds, 3) for k, v in stages.items()}
    log(
        f"bare loop ({device.type}): {bare_rate:.1f} images/s ({bare_seconds:.1f} s); "
        "time shares " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
    )
    log(f"ratio fiqa score / bare loop: {pipeline_rate / bare_rate:.3f}")
    return {
        **result,
        "bare_device": device.type,
        "bare_images_per_s": round(bare_rate, 1),
        "bare_seconds": round(bare_seconds, 1),
        "bare_stage_shares": shares,
        "ratio": round(pipeline_rate / bare_rate, 3),
    }
