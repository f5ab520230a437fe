"""`fiqa demo`: the whole product end to end on embedded defaults, with one command.

The demo runs the same `fiqa` commands a user would type, printing each one first: synthetic
train and held-out identities (degraded, a few files corrupt) -> train (CPU preset; with the
dlib extra, dlib's CR as the quality target) -> score into the manifest -> filter -> export ->
queries -> eval -> report -> the real-face check (with the dlib extra). Object storage is a
local folder, Ray starts locally, and the Iceberg catalog is SQLite under the demo folder
(FIQA_HOME), so nothing outside that folder is touched. It ends with a summary read from
what the steps wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from pydantic import Field

from jobs import cli
from jobs.config import JobConfig, configure_verb
from pipeline import command_log
from pipeline.command_log import LOG_DIR
from pipeline.errors import FiqaError
from pipeline.evaluation import dlib_fr
from pipeline.evaluation.methods import BASELINES, VIT_FIQA
from pipeline.evaluation.outputs import PLOT_FILE, RANKING_FILE, RESULT_FILE
from pipeline.face_check import packaged_photos

MARKER = ".fiqa-demo"  # a folder holding it was made by the demo and may be replaced
TABLE = "demo.manifest"

# (train identities, images each, epochs; eval identities, images each)
SIZES = {"full": (200, 20, 9, 60, 10), "quick": (40, 12, 2, 12, 8)}


class DemoError(FiqaError, RuntimeError):
    """A demo step failed; the message names it."""


class DemoConfig(JobConfig):
    out: str = Field("demo-output", description="local folder for everything the demo writes")
    quick: bool = Field(False, description="a smaller run (about 3 minutes) to see it work")


class _Tee(io.TextIOBase):
    """Prints through, line by line, while keeping a copy, so that a step's JSON summary can
    be read back; the JSON line itself, meant for programs, is not printed."""

    def __init__(self, stream):
        self.stream, self.copy, self.line = stream, io.StringIO(), ""

    def write(self, text: str) -> int:
        self.copy.write(text)
        *done, self.line = (self.line + text).split("\n")
        for line in done:
            if not line.startswith("{"):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def fiqa(command: str, capture: bool = False) -> str:
    """Run one `fiqa` command line in this process; with `capture`, return what it printed."""
    print(f"\n$ fiqa {command}", flush=True)
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee) if capture else contextlib.nullcontext():
        code = cli.main(shlex.split(command))
    if code:
        verb = command.split()[0]
        raise DemoError(f"'fiqa {verb}' failed (exit code {code}); see its message above")
    return tee.copy.getvalue()


def prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoError(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def run(config: DemoConfig) -> None:
    start = time.perf_counter()
    out = Path(config.out).absolute()
    prepare(out)
    os.environ["FIQA_HOME"] = str(out / "fiqa-home")  # the demo's own catalog and warehouse
    log = command_log.current()
    if log is not None:
        log.move_to(out / "fiqa-home" / LOG_DIR)
    ids, per_id, epochs, eval_ids, eval_per_id = SIZES["quick" if config.quick else "full"]
    d, t = shlex.quote(str(out)), TABLE

    fiqa(
        f"synth --identities {ids} --per-identity {per_id} --format wds --shard-size 400 "
        f"--split train --corrupt 6 --out {d}/train"
    )
    fiqa(
        f"synth --identities {eval_ids} --per-identity {eval_per_id} --format wds "
        f"--shard-size 200 --split eval --corrupt 4 --out {d}/eval"
    )
    # With dlib installed, its CR is the quality target (docs/training.md): a head trained
    # from scratch on 200 rendered identities hardly minds the loss of detail, dlib does. An
    # epoch then holds every image and its degraded copy, so half as many epochs see as much.
    if dlib_fr.installed():
        target, epochs = "--teacher dlib ", max(1, epochs // 2)
    else:
        target = "--augment flip photometric blur cutout "
    fiqa(
        f"train --data {d}/train --format wds --eval-data {d}/eval --preset vit-fiqa-cpu "
        f"--epochs {epochs} --batch-size 128 --warmup-epochs 1 --alpha 300 --num-workers 2 "
        f"--cpus-per-worker 0.5 {target}--storage-path {d}/runs --run-name demo --out {d}/model"
    )
    printed = fiqa(
        f"score --model {d}/model --data {d}/eval --format wds --table {t} --json", capture=True
    )
    scored = json.loads(printed.strip().splitlines()[-1])
    fiqa(
        f"filter --table {t} --drop-bottom-percent-per-identity 25 "
        "--min-images-per-identity 4 --out clean"
    )
    fiqa(f"export --table {t} --selection clean --to wds --shard-size 100 --out {d}/clean-wds")
    fiqa(
        f"query --table {t} 'SELECT status, count(*) AS images, round(avg(quality), 4) AS "
        "mean_quality FROM manifest GROUP BY status ORDER BY images DESC'"
    )
    fiqa(
        f'query --table {t} "SELECT identity, count(*) AS images, round(min(quality), 4) AS '
        "worst, round(max(quality), 4) AS best FROM manifest WHERE status = 'ok' GROUP BY "
        'identity ORDER BY max(quality) - min(quality) DESC LIMIT 5"'
    )
    fiqa(
        f"query --table {t} 'SELECT reason, count(*) AS images FROM clean GROUP BY reason "
        "ORDER BY images DESC'"
    )
    # A real FR model, when installed, judges the quality besides the model's own FR head.
    real_fr = "--fr-model dlib " if dlib_fr.installed() else ""
    fiqa(f"eval --model {d}/model --data {d}/eval --format wds {real_fr}--out {d}/eval-result")
    fiqa(
        f"report --table {t} --selection clean --eval {d}/eval-result/{RESULT_FILE} "
        f"--out {d}/report"
    )
    faces = None
    if dlib_fr.installed() and packaged_photos():
        faces = json.loads(fiqa(f"bench faces --model {d}/model", capture=True).splitlines()[-1])
    summarise(out, scored, faces, time.perf_counter() - start)


def edc_line(result: dict, fr_model: str) -> str:
    """ViT-FIQA's pAUC against the best image baseline's under one FR model, and whether the
    bootstrap interval of the difference to every baseline lies above 0."""
    fmr = result["protocol"]["fmrs"][0]
    curves = {
        c["method"]: c for c in result["curves"] if c["fr_model"] == fr_model and c["fmr"] == fmr
    }
    ours = curves[VIT_FIQA]
    baselines = [curves[m] for m in BASELINES if m in curves]
    best = min(baselines, key=lambda c: c["pauc"])
    if abs(ours["pauc"] - best["pauc"]) < 5e-5:
        verdict = "tied (at four decimals)"
    else:
        verdict = "lower (better)" if ours["pauc"] < best["pauc"] else "NOT lower"
    intervals = [c["pauc_minus_vit_fiqa_ci"] for c in baselines if "pauc_minus_vit_fiqa_ci" in c]
    if intervals:
        above = sum(low > 0 for low, _ in intervals)
        verdict += f"; difference interval above 0 for {above} of {len(intervals)} baselines"
    return (
        f"{fr_model}: FNMR at FMR {fmr:g}, pAUC to discard {ours['pauc_discard_limit']:g}: "
        f"ViT-FIQA {ours['pauc']:.4f}, best baseline {best['method']} {best['pauc']:.4f}: "
        f"{verdict}"
    )


def summarise(out: Path, scored: dict, faces: dict | None, seconds: float) -> None:
    result = json.loads((out / "eval-result" / RESULT_FILE).read_text())
    edc = "\n            ".join(edc_line(result, fr["name"]) for fr in result["fr_models"])
    statuses = ", ".join(f"{k} {v}" for k, v in scored["statuses"].items())
    if faces is None:
        real = "skipped: needs the dlib extra (pip install '.[dlib]') and the packaged photos"
    else:
        worst = faces["spearman_worst_kind"]
        real = (
            f"Spearman(severity, quality) on {len(faces['faces'])} real photos' faces, "
            f"mean over kinds {faces['spearman_mean']:.2f}, weakest {worst} "
            f"{faces['kinds'][worst]['spearman']:.2f}"
        )
    print(
        f"\n== demo finished in {seconds / 60:.1f} min ==\n"
        f"scored      {scored['images']} images ({statuses}) at "
        f"{scored['images_per_s']:.0f} images/s (end to end: actor start-up and commits "
        "included)\n"
        f"EDC         {edc}\n"
        f"real faces  {real}\n"
        f"report      {out / 'report' / 'index.html'}\n"
        f"evaluation  {out / 'eval-result'} ({RESULT_FILE}, {PLOT_FILE}, {RANKING_FILE})\n"
        f"selection   {out / 'clean-wds'} (the kept images as WebDataset shards)"
    )


def configure(parser) -> None:
    configure_verb(
        parser,
        DemoConfig,
        run,
        example="fiqa demo --quick",
    )
