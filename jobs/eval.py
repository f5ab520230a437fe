"""`fiqa eval`: EDC and pAUC of ViT-FIQA against baselines, with one or more FR models."""

from __future__ import annotations

from pydantic import Field

from jobs.config import StorageConfig, configure_verb
from pipeline.evaluation.outputs import write_outputs
from pipeline.evaluation.plan import EvaluationPlan
from pipeline.evaluation.run import evaluate


class EvalConfig(EvaluationPlan, StorageConfig):
    out: str = Field(description="directory for result.json, edc.png, ranking.md")


def print_summary(result: dict) -> None:
    v, p = result["verification"], result["protocol"]
    print(
        f"model {result['model_id']} on {result['images']} images of {result['identities']} "
        f"identities ({', '.join(f'{k} {n}' for k, n in result['statuses'].items())}): "
        f"verification accuracy {v['verification_accuracy']:.3f} with its own FR head; "
        f"{p['genuine_comparisons']:,} genuine and {p['impostor_comparisons']:,} impostor "
        "comparisons"
    )
    fmr = p["fmrs"][0]
    for fr in result["fr_models"]:
        curves = sorted(
            (c for c in result["curves"] if c["fr_model"] == fr["name"] and c["fmr"] == fmr),
            key=lambda c: c["pauc"],
        )
        limit = curves[0]["pauc_discard_limit"]
        g, i = fr["genuine"], fr["impostor"]
        print(
            f"{fr['name']}: similarity ({fr['similarity']}) genuine mean {g['mean']:.3f} "
            f"sd {g['sd']:.3f}, impostor mean {i['mean']:.3f} sd {i['sd']:.3f}; "
            + "; ".join(f"FNMR {at['fnmr']:.3f} at FMR {at['fmr']:g}" for at in fr["at_fmr"])
        )
        print(
            f"{fr['name']}, FMR {fmr:g}: starting FNMR {curves[0]['starting_error']:.4f}; "
            f"pAUC to discard {limit:g}, best first:"
        )
        for c in curves:
            low, high = c.get("pauc_minus_vit_fiqa_ci", (None, None))
            versus = (
                f"  minus ViT-FIQA's: 95% CI [{low:+.5f}, {high:+.5f}]" if low is not None else ""
            )
            print(f"  {c['method']:<16} {c['pauc']:.5f}{versus}")
        for at in fr["at_fmr"]:
            if not at["resolvable"]:
                print(
                    f"  warning: {p['impostor_comparisons']} impostors cannot resolve FMR "
                    f"{at['fmr']:g}; its threshold is the highest impostor score"
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


def run(config: EvalConfig) -> None:
    storage = config.storage()
    result = evaluate(config, storage)
    print_summary(result)
    for name, uri in write_outputs(result, config.out, storage).items():
        print(f"{name}: {uri}")


def configure(parser) -> None:
    configure_verb(
        parser,
        EvalConfig,
        run,
        example="fiqa eval --model bench/model --data bench/eval --format wds "
        "--fr-model bench/model-arcface --out bench/eval-result",
    )
