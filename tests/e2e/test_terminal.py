"""What a user sees on the terminal: our own lines, with Ray's and pyiceberg's in the log."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import write_faces

# A line of Ray's Python loggers, a worker's output relayed by Ray, a native core-worker line,
# or a record of another library's logger (the terminal shows those only with --verbose, as
# `name: message`).
FOREIGN = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)"
    r"|^(\x1b\[\d+m)?\((\w+ )?pid=\d+"
    r"|^\[\d{4}-\d\d-\d\d [\d:,]+ [IWE] \d+ \d+\]"
    r"|^(ray|pyiceberg)[\w.]*: "
)


def fiqa(*args: str, home: Path) -> tuple[list[str], str, Path]:
    """Run a verb as a user would: the terminal's lines (stdout's, then stderr's), the last
    line of stdout, and the log it named."""
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FIQA_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [
        part for line in (result.stdout + result.stderr).splitlines() for part in line.split("\r")
    ]
    logs = [line.removeprefix("log: ") for line in lines if line.startswith("log: ")]
    assert len(logs) == 1, lines  # named once
    return lines, result.stdout.splitlines()[-1], Path(logs[0])


def assert_only_ours(lines: list[str], log: Path) -> None:
    foreign = [line for line in lines if FOREIGN.search(line)]
    assert not foreign, foreign
    text = "\n".join(lines)
    assert "Execution plan" not in text and "TrainingReport(" not in text
    assert "Warning" not in text  # Python warnings we trigger are fixed, not shown
    repeats = [a for a, b in itertools.pairwise(lines) if a.strip() and a == b]
    assert not repeats, repeats
    held = log.read_text()
    assert "Started a local Ray instance" in held  # Ray's own lines went to the log
    assert "Execution plan" in held


@pytest.mark.slow
def test_train_and_score_print_only_our_lines(tmp_path):
    data = str(tmp_path / "faces")
    write_faces("wds", data, identities=24, per_identity=20, shard_size=160)
    model = str(tmp_path / "model")
    # The default global batch (1024) is larger than these 470-odd training images.
    lines, last, log = fiqa(
        "train",
        "--data",
        data,
        "--format",
        "wds",
        "--preset",
        "vit-fiqa-micro",
        "--epochs",
        "2",
        "--storage-path",
        str(tmp_path / "runs"),
        "--out",
        model,
        home=tmp_path / "home",
    )
    assert_only_ours(lines, log)
    warnings = [line for line in lines if line.startswith("warning: the global batch of 1024")]
    assert len(warnings) == 1, lines
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]  # once each, by rank 0
    assert any(line.strip().startswith("held-out Spearman") for line in lines)
    assert last.startswith(f"artifact: {model} (model_id ")

    lines, _, log = fiqa(
        "score", "--model", model, "--data", data, "--format", "wds", home=tmp_path / "home"
    )
    assert_only_ours(lines, log)
    assert any(line.startswith("scored 480 images of faces (ok 480)") for line in lines), lines
