import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from models.artifact import save_artifact
from models.vit_fiqa import create_model
from pipeline.catalog import open_catalog
from pipeline.decode import DecodeOptions, decode_batch
from pipeline.manifest import committed_shards, dataset_sources, embedding_array, open_table
from pipeline.scoring import QualityScorer, ScoringPlan, score
from tests.builders import face_jpegs, write_faces


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    return tmp_path


def artifact(path, seed=0) -> str:
    import torch

    torch.manual_seed(seed)
    save_artifact(create_model("vit-fiqa-micro"), str(path), preset="vit-fiqa-micro")
    return str(path)


def manifest(table: str = "fiqa.manifest"):
    return open_table(open_catalog(), table).scan().to_arrow()


def test_scorer_rows_follow_the_manifest_contract(tmp_path):
    model = artifact(tmp_path / "m")
    images = [*face_jpegs(3), b"garbage"]
    batch = {
        "image_id": np.array(["a", "b", "c", "d"], object),
        "shard": np.array(["s"] * 4, object),
        "identity": np.array([None] * 4, object),
        "image": np.array(images, object),
        "status": np.array(["ok"] * 4, object),
        "error": np.array([None] * 4, object),
    }
    decoded = decode_batch(batch, DecodeOptions())
    scorer = QualityScorer(model, None, "ds", "run1", threads=1, with_embeddings=True)
    rows = scorer(decoded).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "decode_error"]
    assert all(isinstance(r["quality"], float) for r in rows[:3]) and rows[3]["quality"] is None
    assert rows[3]["embedding"] is None and rows[3]["error"]
    assert embedding_array([r["embedding"] for r in rows[:3]]).shape == (3, 32)
    assert {r["model_id"] for r in rows} == {scorer.model_id} and rows[0]["width"] == 112
    assert rows[0]["identity"] is None and rows[0]["scored_at"].tzinfo is not None


def plan(tmp_path, model, data, **kwargs) -> ScoringPlan:
    return ScoringPlan(
        model=model,
        data=data,
        format=kwargs.pop("format", "wds"),
        table="fiqa.manifest",
        dataset=kwargs.pop("dataset", "faces"),
        batch_size=16,
        actors=(1, 1),
        cpus_per_actor=1,
        **kwargs,
    )


def test_every_image_exactly_once_incrementally_and_per_model(ray_local, home):
    data = str(home / "wds")
    expected = write_faces(
        "wds", data, identities=6, per_identity=10, corrupt_every=7, shard_size=12
    )
    model_a, model_b = artifact(home / "a", seed=0), artifact(home / "b", seed=1)
    lines = []
    first = score(plan(home, model_a, data, commit_every=2), on_commit=lines.append)
    # Shards done at once share a commit: never more than one snapshot per 2 shards.
    assert first.images == 60 and first.shards_scored and 1 <= len(first.snapshots) <= 3
    assert sum(1 for line in lines if line.startswith("commit ")) == len(first.snapshots)
    assert first.files >= 5 and first.model_loads == 1
    rows = manifest()
    assert rows.num_rows == 60
    assert (
        dict(zip(rows["image_id"].to_pylist(), rows["status"].to_pylist(), strict=True)) == expected
    )
    ok = pc.equal(rows["status"], "ok")
    assert pc.all(pc.is_valid(pc.filter(rows["quality"], ok))).as_py()
    assert pc.all(pc.is_null(pc.filter(rows["quality"], pc.invert(ok)))).as_py()

    again = score(plan(home, model_a, data, commit_every=2))
    assert (again.images, again.shards_scored, again.snapshots) == (0, [], [])
    assert again.shards_skipped == again.shards_total == 5
    assert manifest().num_rows == 60

    other = score(plan(home, model_b, data, commit_every=10))
    assert other.images == 60 and other.model_id != first.model_id
    rows = manifest()
    assert rows.num_rows == 120
    keys = list(
        zip(
            rows["dataset"].to_pylist(),
            rows["image_id"].to_pylist(),
            rows["model_id"].to_pylist(),
            strict=True,
        )
    )
    assert len(set(keys)) == 120  # no duplicate (dataset, image_id, model_id)
    table = open_table(open_catalog(), "fiqa.manifest")
    assert committed_shards(table, "faces", first.model_id) == set(first.shards_scored)
    props = table.current_snapshot().summary.additional_properties
    assert props["fiqa.model_id"] == other.model_id and props["fiqa.run_id"] == other.run_id
    assert "ok" in props["fiqa.statuses"] and props["fiqa.dataset"] == "faces"
    # Where the images are, for curation jobs that fetch them later.
    assert dataset_sources(table) == {
        "faces": {"data": data, "format": "wds", "format_options": {}}
    }


def test_a_new_shard_is_the_only_thing_scored(ray_local, home):
    data = str(home / "parquet")
    write_faces("parquet", data, identities=2, per_identity=10, shard_size=10)
    model = artifact(home / "m")
    score(plan(home, model, data, format="parquet"))
    write_faces("parquet", str(home / "more"), identities=1, per_identity=5, prefix="new")
    (home / "more/part-000000.parquet").rename(home / "parquet/part-000009.parquet")
    summary = score(plan(home, model, data, format="parquet"))
    assert summary.shards_scored == ["part-000009.parquet"] and summary.images == 5
    rows = manifest()
    assert rows.num_rows == len(set(rows["image_id"].to_pylist())) == 25


def test_a_relative_fiqa_home_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    from pipeline.catalog import CatalogConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FIQA_HOME", "relative/home")
    props = CatalogConfig().resolved()
    assert props["uri"] == f"sqlite:///{tmp_path}/relative/home/catalog.db"
    assert props["warehouse"] == (tmp_path / "relative/home/warehouse").as_uri()


def test_a_commit_lost_to_another_run_drops_its_shards_and_retries(ray_local, home, monkeypatch):
    import json

    from pipeline import scoring
    from tests.manifests import manifest_rows

    data = str(home / "wds")
    write_faces("wds", data, identities=4, per_identity=10, shard_size=10)
    model = artifact(home / "m")
    model_id = scoring.artifact_config(model)["model_id"]
    append = scoring.append_files
    calls = []

    def another_run_commits_first(table, data_files, properties):
        # Between this run's check and its commit, another run commits the first shard.
        if not calls:
            other = manifest_rows(
                [{"image_id": "shard-000000.tar/x", "dataset": "faces", "run_id": "other"}],
                model_id,
            )
            open_table(open_catalog(), "fiqa.manifest").append(
                other.set_column(2, "shard", pa.array(["shard-000000.tar"])),
                snapshot_properties={
                    "fiqa.dataset": "faces",
                    "fiqa.model_id": model_id,
                    "fiqa.shards": json.dumps(["shard-000000.tar"]),
                },
            )
        calls.append(sorted(json.loads(properties["fiqa.shards"])))
        return append(table, data_files, properties)

    monkeypatch.setattr(scoring, "append_files", another_run_commits_first)
    lines = []
    summary = score(plan(home, model, data, commit_every=4), on_commit=lines.append)
    shards = [f"shard-00000{i}.tar" for i in range(4)]
    assert calls == [shards, shards[1:]], "the lost commit is retried without the winner's shard"
    assert any("1 shards were committed by another run" in line for line in lines)
    assert summary.shards_skipped == 1 and summary.images == 30
    assert sorted(summary.shards_scored) == shards[1:]
    rows = manifest()
    mine = rows.filter(pc.equal(rows["run_id"], summary.run_id))
    assert mine.num_rows == 30 and "shard-000000.tar" not in mine["shard"].to_pylist()
    assert rows.num_rows == 31
    # The dropped shard's files are deleted: only committed files stay in the warehouse.
    table = open_table(open_catalog(), "fiqa.manifest")
    committed = {task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()}
    written = {str(p) for p in (home / "home/warehouse").rglob("*.parquet")}
    assert written == committed
    # pyiceberg must not rebase a lost append by itself: scoring re-checks shards instead.
    assert table.properties["commit.retry.num-retries"] == "0"


def test_one_model_load_per_actor_for_the_whole_run(ray_local, home):
    data = str(home / "wds")
    write_faces("wds", data, identities=24, per_identity=100, shard_size=100)
    lines = []
    summary = score(
        plan(home, artifact(home / "m"), data, write_batch_size=100, commit_every=1).model_copy(
            update={"batch_size": 8}
        ),
        on_commit=lines.append,
    )
    assert summary.images == 2400 and len(summary.snapshots) >= 2, "commits while it flows"
    assert summary.model_loads == 1, "one actor loads the model once, however many commits"


def test_scorer_pool_follows_the_cluster_unless_told():
    from pipeline.scoring import ScorerPool, scorer_pool

    base = plan(None, "m", "d")
    auto = base.model_copy(
        update={"actors": None, "cpus_per_actor": None, "gpus": "auto", "threads_per_actor": None}
    )
    assert scorer_pool(auto, {"CPU": 2}) == ScorerPool((2, 2), 0.25, 0.0, 1)
    assert scorer_pool(auto, {"CPU": 16, "GPU": 8}) == ScorerPool((8, 8), 1.0, 1.0, None)
    cpu_only = auto.model_copy(update={"gpus": 0.0})
    assert scorer_pool(cpu_only, {"CPU": 16, "GPU": 8}) == ScorerPool((16, 16), 0.25, 0.0, 1)
    told = auto.model_copy(update={"actors": (2, 6), "threads_per_actor": 3, "cpus_per_actor": 2})
    assert scorer_pool(told, {"CPU": 16}) == ScorerPool((2, 6), 2, 0.0, 3)
    assert scorer_pool(auto.model_copy(update={"actors": (2, 2)}), {"CPU": 8}).threads == 4
    assert scorer_pool(auto.model_copy(update={"threads_per_actor": 4}), {"CPU": 8}).actors == (
        2,
        2,
    )


def test_a_shard_is_complete_when_its_rows_add_up():
    from pipeline.ledger import LedgerError, ShardLedger

    ledger = ShardLedger()
    ledger.add("a", 3, 0, {"ok": 3}, "file-1")
    ledger.add("b", 2, 2, {"ok": 1, "decode_error": 1}, "file-2")
    ledger.add("a", 2, 7, {"ok": 2}, "file-3")  # the last row came before all the others
    assert [p.key for p in ledger.take_ready()] == ["b"]
    ledger.add("a", 2, 0, {"ok": 2}, "file-4")
    (a,) = ledger.take_ready()
    assert (a.rows, a.files, a.statuses["ok"]) == (7, ["file-1", "file-3", "file-4"], 7)
    assert not ledger.shards and ledger.completed == {"a", "b"}
    ledger.add("c", 1, 1, {"ok": 1}, "file-5")
    with pytest.raises(LedgerError):
        ledger.add("c", 1, 0, {"ok": 1}, "file-6")
