"""`fiqa bench <what>`: benchmarks of this machine, each against a bare baseline."""

from __future__ import annotations

import json

import torch
from pydantic import Field

from jobs.config import JobConfig, PresetName, register_verb
from models.presets import Mode
from models.vit_fiqa import create_model
from pipeline.benchmark import bench_decode, bench_model, bench_synth


class BenchModelConfig(JobConfig):
    preset: PresetName = Field("vit-fiqa-cpu", description="architecture preset")
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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure this machine (last line: JSON)",
        description="benchmarks; each prints one JSON line last",
    )
    what = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    register_verb(
        what,
        "model",
        BenchModelConfig,
        run_model,
        summary="inference images/s of a preset and its fraction of the GEMM rate",
        example="fiqa bench model --preset vit-fiqa-cpu --batch-sizes 16 64 256",
    )
    register_verb(
        what,
        "decode",
        BenchDecodeConfig,
        run_decode,
        summary="decode images/s per core of each JPEG backend vs the bare library",
        example="fiqa bench decode --sizes 112 1024",
    )
    register_verb(
        what,
        "synth",
        BenchSynthConfig,
        run_synth,
        summary="synthetic faces rendered per second per core vs JPEG encoding alone",
        example="fiqa bench synth --seconds 5",
    )
