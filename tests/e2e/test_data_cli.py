"""The data-plane verbs from the command line, against moto's S3 server and local Ray."""

import json
import subprocess
import sys

import pytest


def fiqa(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_synth_rec_on_s3_then_inspect(s3_bucket):
    uri = f"s3://{s3_bucket}/synth-train"
    out = fiqa(
        "synth",
        "--identities",
        "100",
        "--per-identity",
        "20",
        "--format",
        "rec",
        "--out",
        uri,
        "--seed",
        "1",
    )
    assert f"dataset: {uri}" in out.stdout
    summary = last_json(fiqa("inspect", "--data", uri, "--format", "rec", "--json"))
    assert summary["images"] == 2000 and summary["identities"] == 100
    assert summary["statuses"] == {"ok": 2000} and summary["sizes"] == {"112x112": 2000}


def test_synth_is_deterministic_and_splits_are_disjoint(tmp_path):
    for name, split in (("a", "train"), ("b", "train"), ("c", "eval")):
        fiqa(
            "synth",
            "--identities",
            "3",
            "--per-identity",
            "2",
            "--format",
            "wds",
            "--split",
            split,
            "--out",
            str(tmp_path / name),
            "--workers",
            "1",
        )
    a, b, c = (sorted((tmp_path / n).glob("*.tar"))[0].read_bytes() for n in "abc")
    assert a == b and a != c
    meta = [
        json.loads(line) for line in (tmp_path / "c/_synth_metadata.jsonl").read_text().splitlines()
    ]
    assert len(meta) == 6 and all(m["identity"].startswith("eval-") for m in meta)


def test_folder_index_then_inspect(tmp_path):
    data = tmp_path / "folder"
    fiqa(
        "synth",
        "--identities",
        "4",
        "--per-identity",
        "3",
        "--format",
        "folder",
        "--out",
        str(data),
        "--degradations",
        "none",
        "--image-format",
        "png",
    )
    out = fiqa("index", "--data", str(data), "--rows-per-shard", "5")
    assert "index: 3 shards at" in out.stdout
    summary = last_json(fiqa("inspect", "--data", str(data), "--format", "folder", "--json"))
    assert (summary["shards"], summary["images"], summary["identities"]) == (3, 12, 4)


def test_bad_synth_values_are_refused_before_work(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "synth",
            "--out",
            str(tmp_path),
            "--degradations",
            "blurr",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "degradations (--degradations)" in result.stderr
    assert "blurr" in result.stderr and not any(tmp_path.iterdir())
