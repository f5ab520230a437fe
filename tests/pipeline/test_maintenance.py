"""`fiqa maintain`: compaction, expiry and orphan removal keep every row, shard, source and
selection; time travel to an expired snapshot is refused; races with scoring lose nothing."""

import datetime
import json
import os
import time
import types

import pyarrow as pa
import pytest

from jobs.cli import main
from jobs.config import ConfigError, validate
from jobs.maintain import MaintainConfig
from pipeline.catalog import open_catalog
from pipeline.command_log import LOG_DIR
from pipeline.curation import CurationPlan, curate, current_selection
from pipeline.datafiles import FileLayout, append_files, write_data_file
from pipeline.filtering import filter_manifest
from pipeline.maintenance import MAINTENANCE, MaintenancePlan, bins, maintain
from pipeline.manifest import (
    committed_shards,
    dataset_source,
    dataset_sources,
    open_table,
    partition_files,
)
from pipeline.policy import FilterPolicy
from pipeline.query import QueryError, open_query
from pipeline.runlog import read_runs
from pipeline.selection import load_selection
from tests.manifests import manifest_rows

TABLE = "faces.quality"
PARTITIONS = (("ms1", "m1"), ("web", "m1"), ("ms1", "m2"))
EMBEDDING = bytes(range(16))
WRITE = "pipeline.maintenance.write_data_file"  # how compaction writes a file


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    return tmp_path


def score_commit(table, k: int, with_field_ids: bool) -> None:
    """Commit k: one shard of one partition, as scoring does (`append_files`), or as older
    versions did (pyiceberg's writer: files with field ids)."""
    dataset, model_id = PARTITIONS[k % len(PARTITIONS)]
    shard = f"shard-{k:03d}"
    rows = manifest_rows(
        [
            {
                "dataset": dataset,
                "image_id": f"{shard}/{i}",
                "shard": shard,
                "identity": f"id{i % 2}",
                "quality": k + i / 10,
                "embedding": EMBEDDING if i == 0 else None,
            }
            for i in range(3)
        ],
        model_id,
        minutes=k,
    )
    source = dataset_source(f"/data/{dataset}", "rec", {})
    properties = {
        "fiqa.run_id": f"run{k}",
        "fiqa.model_id": model_id,
        "fiqa.dataset": dataset,
        "fiqa.source": json.dumps(source, sort_keys=True),
        "fiqa.shards": json.dumps([shard]),
        "fiqa.statuses": json.dumps({"ok": 3}),
    }
    if with_field_ids:
        table.append(rows, snapshot_properties=properties)
    else:
        append_files(table, [write_data_file(rows, FileLayout.of(table), None)], properties)


def build(commits: int):
    table = open_table(open_catalog(), TABLE)
    for k in range(commits):
        score_commit(table, k, with_field_ids=k < 10)
    return table


def all_rows(table) -> pa.Table:
    table.refresh()
    rows = table.scan().to_arrow()
    return rows.sort_by(
        [("dataset", "ascending"), ("model_id", "ascending"), ("image_id", "ascending")]
    )


def shards(table) -> dict:
    return {p: committed_shards(table, *p) for p in PARTITIONS}


def files_of(table, partition) -> list:
    return list(partition_files(table, *partition))


def backdate(root, days: float) -> None:
    old = time.time() - days * 86400
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (old, old))


def test_fifty_commits_compacted_and_expired_keep_every_row(home, capsys):
    table = build(50)
    rows, before_shards, sources = all_rows(table), shards(table), dataset_sources(table)
    first = min(table.snapshots(), key=lambda s: s.timestamp_ms)
    early = datetime.datetime.fromtimestamp(first.timestamp_ms / 1000 + 0.001, datetime.UTC)
    location = table.location().removeprefix("file://")
    old_orphan = f"{location}/data/dataset=ms1/model_id=m1/crashed-run.parquet"
    with open(old_orphan, "wb") as f:
        f.write(b"written by a run that crashed")
    backdate(location, days=2)
    young_orphan = f"{location}/data/dataset=ms1/model_id=m1/run-in-flight.parquet"
    with open(young_orphan, "wb") as f:
        f.write(b"written by a run that has not committed yet")

    plan = MaintenancePlan(
        keep_last=3,
        expire_before=datetime.datetime.now(datetime.UTC),
        orphan_age=datetime.timedelta(hours=1),
        target_file_size=2**20,
    )
    lines = []
    summary = maintain(open_catalog(), TABLE, plan, progress=lines.append)

    assert [line.split(":")[0] for line in lines] == ["compact", "expire", "orphans"]
    table.refresh()
    assert all_rows(table).equals(rows)
    assert shards(table) == before_shards
    assert dataset_sources(table) == sources
    assert (summary.data_files_before, summary.data_files_after) == (50, len(PARTITIONS))
    assert (summary.files_compacted, summary.files_written) == (50, len(PARTITIONS))
    assert summary.rows_compacted == rows.num_rows
    assert summary.sources_carried == ["ms1", "web"]
    # every scoring snapshot; the compactions and carried sources are newer than the cut-off
    assert summary.snapshots_expired == 50
    assert len(table.snapshots()) == summary.snapshots_retained == len(PARTITIONS) + 2
    assert {s.summary[MAINTENANCE] for s in table.snapshots()} <= {"compact", "sources"}
    # on disk: the files of the retained snapshots and the young orphan; the old orphan and
    # the small files that only expired snapshots had are gone
    needed = {
        task.file.file_path.removeprefix("file://")
        for snapshot in table.snapshots()
        for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files()
    }
    on_disk = {str(p) for p in (home / "home").rglob("*.parquet")}
    assert on_disk == needed | {young_orphan}
    assert len(on_disk) < 50
    assert summary.orphans_young == 1 and summary.orphans_removed > 50
    assert not os.path.exists(old_orphan)

    with open_query(open_catalog(), TABLE) as query:
        assert query.sql("SELECT count(*) AS n FROM manifest")["n"][0].as_py() == rows.num_rows
    with pytest.raises(QueryError, match=f"no snapshot {first.snapshot_id}: .*expired"):
        open_query(open_catalog(), TABLE, snapshot_id=first.snapshot_id)
    assert main(["query", "--table", TABLE, "--as-of", early.isoformat(), "SELECT 1"]) == 2
    refusal = capsys.readouterr().err
    assert "were expired by 'fiqa maintain'" in refusal
    assert f"the oldest one still available is {summary.oldest_snapshot}" in refusal


def test_selection_and_curation_keep_working_after_maintenance(home, monkeypatch):
    build(6)
    catalog = open_catalog()
    policy = FilterPolicy(model_id="m1", datasets=["ms1", "web"], min_quality=2.0)
    written = filter_manifest(catalog, TABLE, "faces.clean", policy)
    selection = load_selection(catalog, "faces.clean")
    plan = CurationPlan(
        table=TABLE,
        datasets=[types.SimpleNamespace(dataset="ms1"), types.SimpleNamespace(dataset="web")],
        policy=policy,
        selection="faces.clean",
        run_log="faces.curation_runs",
        maintenance=MaintenancePlan(
            keep_last=1,
            expire_before=datetime.datetime.now(datetime.UTC),
            orphan_age=datetime.timedelta(0),
        ),
    )

    # a scheduled run that scores nothing new maintains the table at its end
    def nothing_new(scoring, on_commit):
        return types.SimpleNamespace(
            run_id="r",
            model_id="m1",
            shards_total=2,
            shards_scored=[],
            shards_skipped=2,
            images=0,
            statuses={},
        )

    monkeypatch.setattr("pipeline.curation.score", nothing_new)
    summary = curate(plan, progress=lambda line: None)
    assert summary.status == "succeeded" and not summary.selection_written
    assert summary.maintenance["files_compacted"] == 6
    assert summary.maintenance["snapshots_expired"] > 0
    assert catalog.load_table(TABLE).snapshot_by_id(written.info["manifest_snapshot"]) is None
    assert read_runs(catalog, "faces.curation_runs")[-1]["status"] == "succeeded"

    # the selection written before is still the current one, reads the same and is up to date
    after = load_selection(catalog, "faces.clean")
    assert after.rows.equals(selection.rows) and after.info == selection.info
    assert current_selection(plan, policy) == (written.snapshot_id, written.info)
    again = filter_manifest(catalog, TABLE, "faces.clean", policy)
    assert again.info["summary"] == written.info["summary"]
    assert again.info["sources"] == written.info["sources"] != {}
    # a new scoring commit makes the selection stale again
    score_commit(open_table(catalog, TABLE), 6, with_field_ids=False)
    assert current_selection(plan, policy) is None


def test_compaction_commits_onto_a_scoring_commit_made_meanwhile(home, monkeypatch):
    table = build(6)
    rows = all_rows(table)

    def write_then_score(*args, **kwargs):
        written = write_data_file(*args, **kwargs)
        score_commit(open_table(open_catalog(), TABLE), 6, with_field_ids=False)
        monkeypatch.setattr(WRITE, write_data_file)
        return written

    monkeypatch.setattr(WRITE, write_then_score)
    summary = maintain(open_catalog(), TABLE, MaintenancePlan(), progress=lambda line: None)

    assert summary.files_compacted == 6 and summary.partitions_dropped == 0
    after = all_rows(table)
    assert after.num_rows == rows.num_rows + 3
    keys = [
        tuple(r.values()) for r in after.select(["dataset", "model_id", "image_id"]).to_pylist()
    ]
    assert len(set(keys)) == len(keys)
    assert "shard-006" in committed_shards(table, "ms1", "m1")
    # the first compaction lost the race, and was committed again onto the scoring commit
    scored = next(s for s in table.snapshots() if s.summary.get("fiqa.run_id") == "run6")
    compacted = [s for s in table.snapshots() if s.summary.get(MAINTENANCE) == "compact"]
    assert compacted[0].parent_snapshot_id == scored.snapshot_id


def test_a_partition_another_run_compacted_first_is_dropped(home, monkeypatch):
    table = build(6)
    rows = all_rows(table)

    def write_after_another_run(*args, **kwargs):
        monkeypatch.setattr(WRITE, write_data_file)
        maintain(open_catalog(), TABLE, MaintenancePlan(), progress=lambda line: None)
        return write_data_file(*args, **kwargs)

    monkeypatch.setattr(WRITE, write_after_another_run)
    summary = maintain(open_catalog(), TABLE, MaintenancePlan(), progress=lambda line: None)

    assert summary.partitions_dropped == 1
    assert all_rows(table).equals(rows)
    data = home / "home"
    live = {f.file_path.removeprefix("file://") for p in PARTITIONS for f in files_of(table, p)}
    assert {str(p) for p in data.rglob("compact-*.parquet")} == live


def test_cli_dry_run_changes_nothing(home, capsys):
    def files() -> list[str]:  # the catalog and the warehouse; the command's log is beside them
        root = home / "home"
        return sorted(str(p) for p in root.rglob("*") if p.relative_to(root).parts[0] != LOG_DIR)

    table = build(6)
    before = (table.metadata_location, files())
    args = "--dry-run --expire-older-than 0 --keep-last 1 --orphan-older-than 0 --json"
    assert main(["maintain", "--table", TABLE, *args.split()]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads(out[-1])
    assert summary["dry_run"] and summary["files_compacted"] == 6
    assert summary["snapshots_expired"] == 5 and summary["data_files_after"] == 3
    assert out[0].startswith("compact: would replace 6 small data files")
    table.refresh()
    assert (table.metadata_location, files()) == before


def test_small_files_are_grouped_in_shard_order_and_a_lone_one_stays(home):
    table = build(1)
    shard_id = table.schema().find_field("shard").field_id

    def data_file(shard: str, size: int):
        return types.SimpleNamespace(
            file_path=f"{shard}.parquet",
            file_size_in_bytes=size,
            lower_bounds={shard_id: shard.encode()},
        )

    files = [data_file(s, n) for s, n in [("c", 40), ("a", 40), ("big", 100), ("b", 40), ("d", 30)]]
    groups = bins(files, table, target=100)
    assert [[f.file_path for f in group] for group in groups] == [
        ["a.parquet", "b.parquet", "c.parquet"]
    ]


def test_ages_and_times_are_validated():
    with pytest.raises(ConfigError, match="expire_older_than"):
        validate(MaintainConfig, {"expire_older_than": "last week"})
    with pytest.raises(ConfigError, match="orphan_older_than"):
        validate(MaintainConfig, {"orphan_older_than": "2026-01-01"})
    plan = validate(MaintainConfig, {"expire_older_than": "2026-11-30T00:00:00"}).maintenance_plan()
    assert plan.expire_before == datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
    plan = validate(MaintainConfig, {"orphan_older_than": "36h"}).maintenance_plan()
    assert plan.orphan_age == datetime.timedelta(hours=36)
