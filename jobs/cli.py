"""`fiqa`: the command line of the curation pipeline.

A verb's module is imported only when that verb runs (or when asked for everything, as the
tests do), so `fiqa query` and `fiqa --help` never import torch or Ray. Each module has
`configure(parser)`, which adds the verb's flags and action to the parser made here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

from jobs.config import add_verb
from pipeline.catalog import fiqa_home
from pipeline.command_log import LOG_DIR, command_log
from pipeline.errors import FiqaError

# Verb -> (its module under jobs/, its line in `fiqa --help`), in the order of that list.
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write synthetic labelled faces with graded degradations"),
    "index": ("index", "list a folder dataset once into Parquet index shards"),
    "inspect": ("inspect", "count shards, images, identities, statuses and image sizes"),
    "score": ("score", "score a dataset into the quality manifest, exactly once per model"),
    "eval": (
        "eval",
        "rank ViT-FIQA against baseline quality methods by EDC pAUC, with the model's own FR "
        "head and any other FR models (artifacts or ONNX)",
    ),
    "filter": (
        "filter",
        "select the images a training set keeps, by quality rules, into a selection table",
    ),
    "export": (
        "export",
        "write a selection's kept images as a training set (rec-idx, wds, list, parquet)",
    ),
    "query": (
        "query",
        "run read-only SQL over the manifest ('manifest') and selections (by name)",
    ),
    "report": ("report", "write a static HTML report of a manifest, a selection and EDC curves"),
    "curate": (
        "curate",
        "one scheduled curation run: score what is new, filter, export, report, log",
    ),
    "maintain": (
        "maintain",
        "compact a manifest's small data files, expire old snapshots, remove orphan files",
    ),
    "init-model": ("init_model", "write a freshly initialised model artifact"),
    "import-weights": (
        "import_weights",
        "import released ViT-FIQA or insightface ViT weights (.pt)",
    ),
    "export-onnx": ("onnx", "export an artifact's inference graph to ONNX"),
    "train": ("train", "fit ViT-FIQA with Ray Train (checkpoints, resume, fault tolerance)"),
    "bench": ("bench", "measure this machine (last line: JSON)"),
    "submit": ("submit", "run a fiqa verb as a Ray job on a running cluster (Ray Jobs API)"),
    "demo": ("demo", "run the whole pipeline end to end on synthetic faces, locally"),
}


def build_parser(verbs: Iterable[str] = VERBS) -> argparse.ArgumentParser:
    """The command line; only the verbs in `verbs` get their flags (importing their module),
    the others are listed with their summary."""
    verbs = set(verbs)
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
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (module, summary) in VERBS.items():
        verb = add_verb(subparsers, name, summary)
        if name in verbs:
            importlib.import_module(f"jobs.{module}").configure(verb)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed with only its verb's module imported: the first word that is not an
    option is the verb (the options before it take no value)."""
    verb = next((word for word in argv if not word.startswith("-")), None)
    return build_parser([verb] if verb else []).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    with command_log(args.verb, args.verbose, fiqa_home() / LOG_DIR) as log:
        try:
            return args.func(args) or 0
        except (FiqaError, FileNotFoundError) as e:
            print(f"fiqa {args.verb}: error: {e}", file=sys.stderr)
            log.announce(if_written=True)
            return 2
        except BaseException:
            log.announce(if_written=True)
            raise


if __name__ == "__main__":
    sys.exit(main())
