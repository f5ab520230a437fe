"""Measurements behind `fiqa bench`: each figure comes with a bare baseline measured in the
same run, so a number can be read as a fraction of what this machine can do."""

from __future__ import annotations

import functools
import io
import itertools
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL
import torch
from PIL import Image, features
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.vit_fiqa import ViTFIQA
from pipeline import decode, status
from pipeline.catalog import CatalogConfig
from pipeline.cluster import connect

if TYPE_CHECKING:
    from pipeline.scoring import ScoringPlan


def rate(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Units per second of `step()` (which returns how many units it did), timed for at least
    `seconds` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        done += step()
    return done / elapsed


def gemm_flops(seconds: float = 2.0, n: int = 1024) -> float:
    """This machine's fp32 matrix-multiply rate in FLOP/s (n x n times n x n)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    def step() -> int:
        torch.mm(a, b, out=out)
        return 2 * n**3

    return rate(step, seconds)


def flops_per_image(model: ViTFIQA) -> int:
    """Forward FLOPs of one image (matmuls, convolution and attention, as counted by torch)."""
    size = model.config.img_size
    # torch's counter knows the GPU attention kernels but not the CPU one used here.
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    with (
        FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter,
        torch.inference_mode(),
    ):
        model(torch.zeros(1, model.config.in_chans, size, size))
    return counter.get_total_flops()


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def model_throughput(model: ViTFIQA, batch_size: int, seconds: float) -> float:
    """Images per second of eval-mode inference at `batch_size`."""
    size = model.config.img_size
    x = torch.randn(batch_size, model.config.in_chans, size, size)
    model.eval()

    def step() -> int:
        model(x)
        return batch_size

    with torch.inference_mode():
        return rate(step, seconds)


def bench_model(
    model: ViTFIQA,
    preset: str,
    batch_sizes: Iterable[int],
    seconds: float,
    log: Callable[[str], None] = print,
) -> dict:
    """Inference images/s per batch size and the fraction of the GEMM rate they achieve."""
    threads = torch.get_num_threads()
    gemm = gemm_flops(seconds=max(1.0, seconds / 2))
    per_image = flops_per_image(model)
    log(
        f"preset {preset} ({model.config.mode} mode): {per_image / 1e9:.3f} GFLOP/image, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    log(f"fp32 GEMM baseline: {gemm / 1e9:.1f} GFLOP/s on {threads} threads")
    results = []
    for batch in batch_sizes:
        images_per_s = model_throughput(model, batch, seconds)
        fraction = per_image * images_per_s / gemm
        results.append(
            {
                "batch_size": batch,
                "images_per_s": round(images_per_s, 1),
                "fraction_of_gemm": round(fraction, 3),
            }
        )
        log(f"  batch {batch:>4}: {images_per_s:8.1f} images/s  {fraction:6.1%} of GEMM rate")
    best = max(results, key=lambda r: r["images_per_s"])
    return {
        "bench": "model",
        "preset": preset,
        "mode": model.config.mode,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gflop_per_image": round(per_image / 1e9, 4),
        "gemm_gflop_per_s": round(gemm / 1e9, 1),
        "results": results,
        "best_images_per_s": best["images_per_s"],
        "best_batch_size": best["batch_size"],
    }


def face_like_jpegs(count: int, size: int, quality: int = 90) -> list[bytes]:
    """`count` distinct size x size JPEGs that compress like face crops (smooth shading, an
    elliptic face, sensor noise: about 4 KB at 112 px, quality 90), unlike pure noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    face = ((x - 0.5) / 0.35) ** 2 + ((y - 0.45) / 0.45) ** 2 < 1
    shade = np.stack([90 + 60 * x, 80 + 50 * y, 70 + 40 * (x + y) / 2], axis=-1)
    shade[face] += (90, 60, 40)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(count):
        pixels = shade + rng.standard_normal(shade.shape, dtype=np.float32) * 6
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        jpegs.append(buffer.getvalue())
    return jpegs


def _cycling(decode_one: Callable[[bytes], object], items: list[bytes]) -> Callable[[], int]:
    """A `rate` step decoding the next item, round-robin."""
    stream = itertools.cycle(items)

    def step() -> int:
        decode_one(next(stream))
        return 1

    return step


def _bare_pillow(data: bytes) -> np.ndarray:
    # To an array, as simplejpeg's bare call and decode_image also return one.
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _bench_backend(
    backend: str, bare: Callable[[bytes], object], jpegs: list[bytes], seconds: float
) -> dict:
    ours = functools.partial(
        decode.decode_image, options=decode.DecodeOptions(jpeg_backend=backend)
    )
    if failed := [d.error for d in map(ours, jpegs) if d.status != status.OK]:
        raise RuntimeError(f"{backend} failed on the bench's own images: {failed[0]}")
    images_per_s = rate(_cycling(ours, jpegs), seconds)
    bare_per_s = rate(_cycling(bare, jpegs), seconds)
    return {
        "backend": backend,
        "images_per_s": round(images_per_s, 1),
        "bare_images_per_s": round(bare_per_s, 1),
        "ratio_to_bare": round(images_per_s / bare_per_s, 3),
    }


def bench_decode(
    images: int = 64,
    seconds: float = 1.0,
    sizes: Iterable[int] = (112, 1024),
    quality: int = 90,
    log: Callable[[str], None] = print,
) -> dict:
    """Single-thread (so: per core) images/s of `decode.decode_image` (guards, conversion,
    orientation, resize to 112) for each JPEG backend, on the same face-like JPEGs of each
    source size, beside the bare library call to an RGB array at full size: Pillow's
    `open().convert("RGB")` or `simplejpeg.decode_jpeg`. A ratio above 1 at large sizes is
    DCT scaling."""
    backends = {"pillow": _bare_pillow}
    if decode.simplejpeg is not None:
        backends["simplejpeg"] = decode.simplejpeg.decode_jpeg
    turbo = features.check_feature("libjpeg_turbo")
    log(
        f"Pillow {PIL.__version__} (libjpeg-turbo: {turbo}); simplejpeg: "
        f"{getattr(decode.simplejpeg, '__version__', 'not installed')}"
    )
    results = []
    for size in sizes:
        jpegs = face_like_jpegs(images, size, quality)
        log(
            f"{images} JPEGs of {size}x{size}, quality {quality}, "
            f"{sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB on average"
        )
        for backend, bare in backends.items():
            result = _bench_backend(backend, bare, jpegs, seconds)
            results.append({"source_size": size, **result})
            log(
                f"  {backend:>10}: {result['images_per_s']:8.1f} images/s, bare library "
                f"{result['bare_images_per_s']:8.1f} images/s ({result['ratio_to_bare']:.2f}x)"
            )
    return {
        "bench": "decode",
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": turbo,
        "simplejpeg": getattr(decode.simplejpeg, "__version__", None),
        "images": images,
        "quality": quality,
        "results": results,
    }


def bench_synth(
    images: int = 200, seconds: float = 3.0, log: Callable[[str], None] = print
) -> dict:
    """Single-process (so: per core) images/s of synthetic faces, rendered, degraded and
    JPEG-encoded as `fiqa synth` writes them, beside the bare cost of encoding the same
    pixels (the floor of writing any image dataset)."""
    from pipeline.synthetic_dataset import SynthSpec, encode, render_identity

    spec = SynthSpec(identities=max(1, images // 20), per_identity=20)
    faces = itertools.cycle(range(spec.identities))

    def synth_step() -> int:
        return len(render_identity(spec, next(faces)))

    pixels = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for _, data, _ in render_identity(spec, 0)
    ]

    def encode_step() -> int:
        for p in pixels:
            encode(p, spec.image_format, spec.jpeg_quality)
        return len(pixels)

    synth_rate, encode_rate = rate(synth_step, seconds, warmup=1), rate(encode_step, seconds)
    log(
        f"synthetic faces: {synth_rate:.0f} images/s per core "
        f"(JPEG encoding alone: {encode_rate:.0f} images/s, {synth_rate / encode_rate:.1%})"
    )
    return {
        "bench": "synth",
        "images_per_s_per_core": round(synth_rate, 1),
        "encode_only_images_per_s": round(encode_rate, 1),
        "ratio_to_encode_only": round(synth_rate / encode_rate, 3),
        "cpu": platform.processor() or platform.machine(),
    }


class ProcessPeakMemory:
    """Peak RSS (VmHWM) of the processes whose command line contains `pattern`, sampled from
    /proc while the block runs (Ray names actor processes after their class). Linux only."""

    def __init__(self, pattern: str, interval: float = 0.25):
        self.pattern, self.interval = pattern.encode(), interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if self.pattern not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mib = max(self.peak_mib, int(line.split()[1]) / 1024)
                except OSError:  # the process ended between listing and reading
                    continue

    def __enter__(self) -> ProcessPeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
    from pipeline.synthetic_dataset import SynthSpec, render_identity

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


QUANTILE_QUERY = (
    "SELECT dataset, count(*) AS images, "
    "quantile_cont(quality, [0.01, 0.1, 0.5, 0.9, 0.99]) AS quantiles "
    "FROM {source} WHERE status = 'ok' GROUP BY dataset ORDER BY dataset"
)


def synthetic_manifest(rows: int, offset: int, datasets: int, seed: int):
    """Manifest rows shaped like a real one (98% ok, 20 images per identity, 1000 per shard),
    fast to make."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.manifest import ARROW_SCHEMA

    rng = np.random.default_rng(seed)
    ids = pa.array(np.arange(offset, offset + rows)).cast(pa.string())
    ok = rng.random(rows) < 0.98
    status = pa.array(np.where(ok, "ok", "decode_error"))
    quality = pa.array(rng.beta(5, 2, rows).astype(np.float32), mask=~ok)
    dataset = pa.array(np.char.add("dataset-", (np.arange(rows) % datasets).astype(str)))
    columns = {
        "dataset": dataset,
        "image_id": ids,
        "shard": pc.binary_join_element_wise(
            "shard-", pa.array(np.arange(offset, offset + rows) // 1000).cast(pa.string()), ""
        ),
        "identity": pa.array(np.arange(offset, offset + rows) // 20).cast(pa.string()),
        "status": status,
        "quality": quality,
        "model_id": pa.array(np.full(rows, "0123456789ab")),
    }
    return pa.table(
        [columns.get(f.name, pa.nulls(rows, f.type)) for f in ARROW_SCHEMA], schema=ARROW_SCHEMA
    )


def bench_query(
    rows: int = 10_000_000,
    *,
    workdir: str,
    datasets: int = 4,
    rows_per_file: int = 2_000_000,
    repeats: int = 5,
    log: Callable[[str], None] = print,
) -> dict:
    """A quantile query per dataset over a `rows`-row manifest: through `fiqa query`'s layer
    (catalog, snapshot planning, sandboxed DuckDB), cold (opening included) and warm, against
    bare DuckDB reading the same Parquet files in the same run."""
    import duckdb
    from pyiceberg.catalog import load_catalog

    from pipeline.manifest import open_table
    from pipeline.query import open_query, sql_literal
    from pipeline.storage import parse_uri

    catalog = load_catalog(
        "bench", type="sql", uri=f"sqlite:///{workdir}/catalog.db", warehouse=f"file://{workdir}"
    )
    table = open_table(catalog, "bench.manifest")
    start = time.perf_counter()
    for offset in range(0, rows, rows_per_file):
        n = min(rows_per_file, rows - offset)
        table.append(synthetic_manifest(n, offset, datasets, seed=offset))
    build = time.perf_counter() - start
    log(f"wrote a {rows:,}-row manifest in {build:.1f} s")
    files = [parse_uri(t.file.file_path).path for t in table.scan().plan_files()]

    def median_time(run: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    def cold() -> None:
        with open_query(catalog, "bench.manifest", selections=()) as q:
            q.sql(QUANTILE_QUERY.format(source="manifest"))

    with open_query(catalog, "bench.manifest", selections=()) as q:
        answer = q.sql(QUANTILE_QUERY.format(source="manifest"))
        warm = median_time(lambda: q.sql(QUANTILE_QUERY.format(source="manifest")))
    cold_s = median_time(cold)
    bare_connection = duckdb.connect()
    listing = ", ".join(map(sql_literal, files))
    bare_sql = QUANTILE_QUERY.format(source=f"read_parquet([{listing}])")
    bare = median_time(lambda: bare_connection.sql(bare_sql).fetchall())
    log(f"quantile query: {cold_s:.3f} s cold, {warm:.3f} s warm, bare DuckDB {bare:.3f} s")
    return {
        "bench": "query",
        "rows": rows,
        "files": len(files),
        "datasets": answer.num_rows,
        "cores": os.cpu_count(),
        "build_s": round(build, 1),
        "query_s": round(cold_s, 3),
        "query_warm_s": round(warm, 3),
        "bare_duckdb_s": round(bare, 3),
        "ratio_bare_to_query": round(bare / cold_s, 3),
    }
