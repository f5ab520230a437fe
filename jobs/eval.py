"""`fiqa eval`: EDC and pAUC of ViT-FIQA against baselines, with one or more FR models."""

from __future__ import annotations

from pydantic import Field, field_validator

from jobs.config import DataConfig, Gpus, configure_verb, gpus_or_none
from pipeline.evaluation import EvaluationPlan, FrModelSpec, SerFiq, evaluate, write_outputs
from pipeline.evaluation.methods import METHODS


class EvalConfig(DataConfig):
    model: str = Field(description="the token-mode model artifact to evaluate")
    out: str = Field(description="directory for result.json, edc.png, ranking.md")
    fr_models: list[FrModelSpec] = Field(
        [],
        description="more FR models: artifact directories, .onnx files (YAML: full specs "
        "with size, mean, std, colour_order, layout, dtype) or dlib (pip install '.[dlib]')",
        json_schema_extra={"flag": "--fr-model", "metavar": "URI"},
    )
    crfiqa_model: str | None = Field(None, description="a crfiqa-mode artifact to compare")
    methods: list[str] | None = Field(
        None, description=f"quality methods (default: all that apply of {', '.join(METHODS)})"
    )
    fmr: list[float] = Field([1e-3, 1e-4], description="FMRs the thresholds are fixed at")
    discard_limit: list[float] = Field([0.2, 0.3], description="pAUC discard limits")
    max_genuine: int = Field(200_000, gt=0, description="cap on genuine comparisons")
    impostors: int = Field(500_000, gt=0, description="impostor comparisons sampled")
    bootstrap: int = Field(
        200, ge=0, description="identity resamples for 95% intervals of each pAUC (0: none)"
    )
    ser_fiq_passes: int = Field(100, ge=2, description="SER-FIQ dropout passes (T)")
    ser_fiq_dropout: float = Field(0.5, gt=0, lt=1, description="SER-FIQ dropout rate")
    batch_size: int = Field(128, gt=0, description="images per model call")
    gpus: Gpus = Field(
        "auto", description="the GPU this process uses: auto (one when torch sees one), 0 or 1"
    )
    seed: int = Field(0, description="seed of pair sampling, random quality and dropout")

    @field_validator("fr_models", mode="before")
    @classmethod
    def uris_are_specs(cls, values):
        return [{"uri": v} if isinstance(v, str) else v for v in values or []]

    @field_validator("fmr")
    @classmethod
    def rates(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 < v < 1 for v in values):
            raise ValueError("FMRs must lie in (0, 1)")
        return values

    @field_validator("discard_limit")
    @classmethod
    def limits(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError("discard limits must lie in (0, 1]")
        return values

    def plan(self) -> EvaluationPlan:
        return EvaluationPlan(
            model=self.model,
            data=self.data,
            format=self.format,
            format_options=self.format_options,
            storage=self.storage(),
            fr_models=tuple(self.fr_models),
            crfiqa_model=self.crfiqa_model,
            methods=self.methods,
            fmrs=tuple(self.fmr),
            discard_limits=tuple(self.discard_limit),
            max_genuine=self.max_genuine,
            impostors=self.impostors,
            bootstrap=self.bootstrap,
            ser_fiq=SerFiq(self.ser_fiq_passes, self.ser_fiq_dropout),
            seed=self.seed,
            batch_size=self.batch_size,
            gpus=gpus_or_none(self.gpus),
        )


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
    result = evaluate(config.plan())
    print_summary(result)
    for name, uri in write_outputs(result, config.out, config.storage()).items():
        print(f"{name}: {uri}")


def configure(parser) -> None:
    configure_verb(
        parser,
        EvalConfig,
        run,
        example="fiqa eval --model bench/model --data bench/eval --format wds "
        "--fr-model bench/model-arcface --out bench/eval-result",
    )
