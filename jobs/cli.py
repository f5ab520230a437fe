"""`fiqa`: the command line of the curation pipeline."""

from __future__ import annotations

import argparse
import sys

from jobs import (
    bench,
    curate,
    demo,
    eval,
    export,
    export_onnx,
    filter,
    import_weights,
    index,
    init_model,
    inspect,
    maintain,
    query,
    report,
    score,
    submit,
    synth,
    train,
)
from jobs.config import ConfigError
from jobs.demo import DemoError
from jobs.submit import SubmitError
from models.artifact import ArtifactError
from models.weights import WeightsError
from pipeline.catalog import fiqa_home
from pipeline.command_log import LOG_DIR, command_log
from pipeline.evaluation import EvaluationError
from pipeline.export import ExportError
from pipeline.maintenance import MaintenanceError
from pipeline.policy import PolicyError
from pipeline.query import QueryError
from pipeline.report import ReportError
from pipeline.selection import SelectionError
from pipeline.storage import StorageError
from pipeline.training import TrainingError

VERBS = (
    synth,
    index,
    inspect,
    score,
    eval,
    filter,
    export,
    query,
    report,
    curate,
    maintain,
    init_model,
    import_weights,
    export_onnx,
    train,
    bench,
    submit,
    demo,
)
# Errors that are the input's fault: reported in one line, without a traceback.
USER_ERRORS = (
    ConfigError,
    DemoError,
    ArtifactError,
    WeightsError,
    StorageError,
    TrainingError,
    EvaluationError,
    ExportError,
    MaintenanceError,
    PolicyError,
    QueryError,
    ReportError,
    SelectionError,
    SubmitError,
    FileNotFoundError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiqa",
        description="ViT-FIQA face-image-quality scoring and curation on Ray.",
        epilog="run 'fiqa VERB --help' for a verb's flags and an example",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and Ray's and the other libraries' output on the terminal too "
        "(it always goes to the command's log under FIQA_HOME/logs)",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with command_log(args.verb, args.verbose, fiqa_home() / LOG_DIR) as log:
        try:
            return args.func(args) or 0
        except USER_ERRORS as e:
            print(f"fiqa {args.verb}: error: {e}", file=sys.stderr)
            log.announce(if_written=True)
            return 2
        except BaseException:
            log.announce(if_written=True)
            raise


if __name__ == "__main__":
    sys.exit(main())
