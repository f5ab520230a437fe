"""`fiqa eval`: evaluate a model artifact on a labelled dataset; writes result.json."""

from __future__ import annotations

import json

from pydantic import Field

from jobs.config import DataConfig, register_verb
from pipeline.evaluation import evaluate
from pipeline.storage import filesystem

RESULT_FILE = "result.json"


class EvalConfig(DataConfig):
    model: str = Field(description="model artifact URI")
    out: str = Field(description="directory for result.json (local or s3://)")
    seed: int = Field(0, description="seed of the pair sampling")


def run(config: EvalConfig) -> None:
    storage = config.storage()
    result = evaluate(
        config.model,
        config.data,
        config.format,
        storage=storage,
        format_options=config.format_options,
        seed=config.seed,
    )
    v = result["verification"]
    print(
        f"model {result['model_id']} on {result['images']} images of {result['identities']} "
        f"identities: verification accuracy {v['verification_accuracy']:.3f}, "
        f"TAR@FMR1e-3 {v['tar_at_fmr']:.3f} ({v['genuine_pairs']:.0f} genuine pairs)"
    )
    if "severity" in result:
        s = result["severity"]
        print("severity quartile  images  mean severity  mean quality  verification acc")
        for q in s["quartiles"]:
            print(
                f"{q['quartile']:>17}  {q['images']:>6}  {q.get('mean_severity', 0):>13.3f}  "
                f"{q.get('mean_quality', float('nan')):>12.4f}  "
                f"{q.get('verification_accuracy', float('nan')):>16.3f}"
            )
        trend = "strictly decreasing" if s["strictly_decreasing"] else "NOT strictly decreasing"
        print(
            f"mean quality across severity quartiles: {trend}; Spearman(quality, -severity) "
            f"{s['spearman_quality_vs_severity']:.3f}"
        )
    fs, out = filesystem(config.out, storage)
    fs.makedirs(out, exist_ok=True)
    with fs.open(f"{out.rstrip('/')}/{RESULT_FILE}", "w") as f:
        json.dump(result, f, indent=2)
    print(f"result: {config.out.rstrip('/')}/{RESULT_FILE}")


def register(subparsers) -> None:
    register_verb(
        subparsers,
        "eval",
        EvalConfig,
        run,
        summary="evaluate a model on a labelled dataset: verification and, on synthetic "
        "data, quality by degradation severity",
        example="fiqa eval --model models/vit-fiqa-cpu --data bench/eval --format wds "
        "--out bench/eval-result",
    )
