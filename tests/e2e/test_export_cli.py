"""`fiqa export` from the command line: a YAML catalog, a bare selection name, S3 output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.catalog import CatalogConfig
from pipeline.storage import StorageOptions, filesystem
from tests.pipeline.test_export import samples_of, select, write_dataset


def fiqa(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))


def test_rec_idx_with_a_yaml_catalog_and_a_bare_selection_name(tmp_path):
    catalog = CatalogConfig(
        properties={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
    )
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump({"catalog": catalog.model_dump(), "table": "faces.quality"}))
    uri = str(tmp_path / "rec")
    samples = write_dataset("rec", uri, identities=3, per_identity=4)
    kept = select({"faces": (uri, "rec", samples)}, lambda _, n: n % 2, "faces.q30", catalog)
    index = Path(uri, "train.idx")
    index.write_text("".join(ln for ln in index.read_text().splitlines(True) if ln[:2] != "4\t"))
    out = str(tmp_path / "q30")
    result = fiqa(
        "--config", str(config), "--selection", "q30", "--to", "rec-idx", "--out", out, "--json"
    )
    summary = summary_of(result)
    assert summary["selection"] == "faces.q30" and summary["images"] == len(kept) - 1 == 5
    *_, missing, which, done, where, _ = result.stdout.strip().splitlines()
    assert missing == "not exported: 1 kept images (missing 1)"
    assert which == "  faces train.rec#4: missing: no record of train.idx has this key"
    assert done.startswith("exported 5 of 6 kept images (faces.q30, snapshot ")
    assert where == f"output: {out}"
    back = samples_of("rec", out)
    assert [(r["identity"], r["image"]) for r in back] == [
        (s["identity"], s["image"]) for _, s in kept if s["image_id"] != "train.rec#4"
    ]


@pytest.mark.slow
def test_wds_to_s3(tmp_path, s3_bucket):
    uri = str(tmp_path / "wds")
    samples = write_dataset("wds", uri, identities=3, per_identity=5)
    kept = select({"faces": (uri, "wds", samples)}, lambda _, n: n != 4)
    out = f"s3://{s3_bucket}/exports/faces"
    summary = summary_of(
        fiqa("--selection", "chosen", "--to", "wds", "--out", out, "--shard-size", "5", "--json")
    )
    assert [s["images"] for s in summary["shards"]] == [5, 5, 4] and summary["problems"] == []
    storage = StorageOptions().with_environment()
    back = samples_of("wds", out, storage)
    assert [(r["identity"], r["image"]) for r in back] == [
        (s["identity"], s["image"]) for _, s in kept
    ]
    fs, root = filesystem(out, storage)
    assert sorted(os.path.basename(p) for p in fs.ls(root)) == [
        "_export.json",
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    assert json.loads(fs.cat_file(f"{root}/_export.json"))["images"] == 14


def test_bad_requests_are_refused_clearly(tmp_path):
    assert "example:" in fiqa("--help").stdout
    bad_target = fiqa("--selection", "s", "--to", "zip", "--out", str(tmp_path / "x"))
    assert bad_target.returncode == 2 and "invalid choice: 'zip'" in bad_target.stderr
    no_selection = fiqa("--selection", "nothing", "--to", "list", "--out", str(tmp_path / "x"))
    assert no_selection.returncode == 2
    assert "fiqa export: error: no selection table 'fiqa.nothing'" in no_selection.stderr
    misplaced = fiqa("--selection", "s", "--to", "wds", "--with-bytes", "--out", "x")
    assert misplaced.returncode == 2 and "with_bytes (--with-bytes)" in misplaced.stderr
    assert not (tmp_path / "x").exists()
