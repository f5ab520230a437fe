"""`fiqa train`: fit ViT-FIQA with Ray Train; resumes a run of the same name."""

from __future__ import annotations

from jobs.config import StorageConfig, configure_verb
from pipeline.evaluation.verification import FMR
from pipeline.training.run import fit
from pipeline.training.spec import TrainSpec


class TrainConfig(TrainSpec, StorageConfig):
    def spec(self) -> TrainSpec:
        """These settings as the pipeline's spec (the storage settings go to `fit` apart)."""
        return TrainSpec.model_validate(self.model_dump(include=set(TrainSpec.model_fields)))


def run(config: TrainConfig) -> None:
    result = fit(config.spec(), config.storage())
    print(summary_table(result.summary["trained"]["epochs"][-1]))
    print(f"checkpoints: {result.run_path}")
    print(f"artifact: {result.out} (model_id {result.model_id})")


# (metric, label) of the final summary, in order; a metric the run did not measure is left out.
SUMMARY_ROWS = (
    ("loss", "loss"),
    ("ce", "  margin softmax (CE)"),
    ("quality_loss", "  quality regression"),
    ("accuracy", "training accuracy"),
    ("holdout_spearman", "held-out Spearman(quality, CR)"),
    ("verification_accuracy", "verification accuracy (eval data)"),
    ("tar_at_fmr", f"TAR at FMR {FMR:g} (eval data)"),
)


def summary_table(last: dict[str, float]) -> str:
    """The last epoch's loss parts and held-out metrics, one per line."""
    rows = [(label, last[key]) for key, label in SUMMARY_ROWS if key in last]
    width = max(len(label) for label, _ in rows)
    lines = [f"after epoch {last['epoch']}, step {last['step']}:"]
    lines += [f"  {label:<{width}}  {value:8.4f}" for label, value in rows]
    return "\n".join(lines)


def configure(parser) -> None:
    configure_verb(
        parser,
        TrainConfig,
        run,
        example="fiqa train --data s3://faces/train --format wds --eval-data s3://faces/eval "
        "--num-workers 2 --epochs 20 --storage-path s3://faces/runs --run-name v1 "
        "--out s3://faces/models/v1",
    )
