"""`fiqa bench <what>`: benchmarks of this machine, each against a bare baseline."""

from __future__ import annotations

import json

import torch
from pydantic import Field, model_validator

from jobs.config import JobConfig, add_verb, configure_verb
from models.presets import Mode
from models.vit_fiqa import create_model
from pipeline.bench.decode import bench_decode
from pipeline.bench.model import bench_model
from pipeline.bench.score import bench_score
from pipeline.bench.synth import bench_synth
from pipeline.catalog import CatalogConfig
from pipeline.scoring import ScorerSettings, ScoringPlan
from pipeline.settings import DEFAULT_PRESET, PresetName


class BenchModelConfig(JobConfig):
    preset: PresetName = Field(DEFAULT_PRESET, description="architecture preset")
    mode: Mode = Field("token", description="token, crfiqa or full")
    batch_sizes: list[int] = Field([1, 16, 64, 256], description="batch sizes to time")
    seconds: float = Field(3.0, gt=0, description="timed seconds per batch size")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")


def run_model(config: BenchModelConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    model = create_model(config.preset, mode=config.mode).eval()
    result = bench_model(model, config.preset, config.batch_sizes, config.seconds)
    print(json.dumps(result))


class BenchDecodeConfig(JobConfig):
    images: int = Field(64, gt=0, description="distinct JPEGs per source size")
    sizes: list[int] = Field([112, 1024], description="source sizes (decoded to 112x112)")
    seconds: float = Field(2.0, gt=0, description="timed seconds per backend and size")


def run_decode(config: BenchDecodeConfig) -> None:
    print(json.dumps(bench_decode(config.images, config.seconds, config.sizes)))


class BenchSynthConfig(JobConfig):
    seconds: float = Field(3.0, gt=0, description="timed seconds")


def run_synth(config: BenchSynthConfig) -> None:
    print(json.dumps(bench_synth(seconds=config.seconds)))


class BenchQueryConfig(JobConfig):
    rows: int = Field(10_000_000, gt=0, description="manifest rows to generate and query")
    datasets: int = Field(4, gt=0, description="datasets the rows are spread over")
    repeats: int = Field(5, gt=0, description="timed runs per variant (the median is kept)")


def run_query(config: BenchQueryConfig) -> None:
    import tempfile

    from pipeline.bench.query import bench_query

    with tempfile.TemporaryDirectory() as workdir:
        result = bench_query(
            config.rows, workdir=workdir, datasets=config.datasets, repeats=config.repeats
        )
    print(json.dumps(result))


class BenchScaleConfig(JobConfig):
    rows: int = Field(5_000_000, gt=0, description="manifest rows to generate")
    workdir: str | None = Field(
        None, description="where the manifest and outputs go (default: a temporary folder)"
    )


def run_scale(config: BenchScaleConfig) -> None:
    import tempfile
    from pathlib import Path

    from pipeline.bench.scale import bench_scale

    with tempfile.TemporaryDirectory(dir=config.workdir) as workdir:
        result = bench_scale(config.rows, Path(workdir))
    print(json.dumps(result))


class BenchFacesConfig(JobConfig):
    model: str = Field(description="the model artifact to check (e.g. the demo's)")
    seed: int = Field(0, description="seed of the degradations' random choices")


def run_faces(config: BenchFacesConfig) -> None:
    from models.artifact import load_artifact
    from pipeline.face_check import face_check, summary_lines
    from pipeline.storage import filesystem

    fs, path = filesystem(config.model)
    result = face_check(load_artifact(path, fs=fs), seed=config.seed)
    print("\n".join(summary_lines(result)))
    print(json.dumps(result))


def configure(parser) -> None:
    what = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    configure_verb(
        add_verb(
            what,
            "model",
            "inference images/s of a preset and its fraction of the GEMM rate",
        ),
        BenchModelConfig,
        run_model,
        example="fiqa bench model --preset vit-fiqa-cpu --batch-sizes 16 64 256",
    )
    configure_verb(
        add_verb(
            what,
            "decode",
            "decode images/s per core of each JPEG backend vs the bare library",
        ),
        BenchDecodeConfig,
        run_decode,
        example="fiqa bench decode --sizes 112 1024",
    )
    configure_verb(
        add_verb(
            what,
            "synth",
            "synthetic faces rendered per second per core vs JPEG encoding alone",
        ),
        BenchSynthConfig,
        run_synth,
        example="fiqa bench synth --seconds 5",
    )
    configure_verb(
        add_verb(
            what,
            "score",
            "fiqa score with its defaults vs a bare loop on the same images; peak memory",
        ),
        BenchScoreConfig,
        run_score,
        example="fiqa bench score --commit-every 4",
    )
    configure_verb(
        add_verb(
            what,
            "train",
            "steady-state training images/s of fiqa train (1, 2 workers) vs a bare loop",
        ),
        BenchTrainConfig,
        run_train,
        example="fiqa bench train --batch-size 32 --steps 300 --workers 1 2",
    )
    configure_verb(
        add_verb(
            what,
            "query",
            "a quantile query over a generated manifest vs bare DuckDB on its files",
        ),
        BenchQueryConfig,
        run_query,
        example="fiqa bench query --rows 10000000",
    )
    configure_verb(
        add_verb(
            what,
            "faces",
            "real packaged face photos degraded in steps of every kind: Spearman(severity, "
            "quality) per kind and dlib's distance to the clean face (needs the dlib extra)",
        ),
        BenchFacesConfig,
        run_faces,
        example="fiqa bench faces --model demo-output/model",
    )
    configure_verb(
        add_verb(
            what,
            "scale",
            "filter, export, report and the shard lookup over an N-row manifest: peak "
            "memory and seconds of each",
        ),
        BenchScaleConfig,
        run_scale,
        example="fiqa bench scale --rows 5000000",
    )


class BenchScoreConfig(ScorerSettings, JobConfig):
    """`fiqa score`'s own settings, with its defaults, plus the benchmark's data."""

    images: int = Field(64_000, gt=0, description="images to score")
    shard_size: int = Field(1000, gt=0, description="images per WebDataset shard")
    preset: PresetName = Field(DEFAULT_PRESET, description="architecture preset")
    baseline: bool = Field(True, description="also time the bare single-process loop")


def run_score(config: BenchScoreConfig) -> None:
    def plan_for(model: str, data: str, catalog: CatalogConfig) -> ScoringPlan:
        return config.scoring_plan(
            model=model,
            data=data,
            format="wds",
            table="bench.manifest",
            dataset="bench",
            catalog=catalog,
        )

    result = bench_score(
        plan_for,
        config.images,
        config.preset,
        shard_size=config.shard_size,
        baseline=config.baseline,
    )
    print(json.dumps(result))


class BenchTrainConfig(JobConfig):
    preset: PresetName = Field(DEFAULT_PRESET, description="architecture preset")
    batch_size: int = Field(32, gt=0, description="global batch")
    steps: int = Field(300, gt=0, description="timed steps of each run, after one warm-up step")
    workers: list[int] = Field([1, 2], description="Ray Train worker counts to time")

    @model_validator(mode="after")
    def divisible(self):
        if bad := [n for n in self.workers if n <= 0 or self.batch_size % n]:
            raise ValueError(f"batch_size {self.batch_size} does not split over {bad} workers")
        return self


def run_train(config: BenchTrainConfig) -> None:
    import tempfile

    from pipeline.bench.train import bench_train

    with tempfile.TemporaryDirectory() as workdir:
        result = bench_train(
            config.preset,
            batch_size=config.batch_size,
            steps=config.steps,
            workers=tuple(config.workers),
            workdir=workdir,
        )
    print(json.dumps(result))
