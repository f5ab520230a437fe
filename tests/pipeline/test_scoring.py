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
    assert first.images == 60 and first.shards_scored and len(first.snapshots) == 3
    assert sum(1 for line in lines if line.startswith("commit ")) == 3
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
    counted = scoring.status_counts
    calls = []

    def another_run_commits_first(rows):
        # Between this run's check and its commit, another run commits the group's first shard.
        if not calls:
            other = manifest_rows(
                [{"image_id": "shard-000000.tar/x", "dataset": "faces", "run_id": "other"}],
                model_id,
            )
            table = open_table(open_catalog(), "fiqa.manifest")
            table.append(
                other.set_column(2, "shard", pa.array(["shard-000000.tar"])),
                snapshot_properties={
                    "fiqa.dataset": "faces",
                    "fiqa.model_id": model_id,
                    "fiqa.shards": json.dumps(["shard-000000.tar"]),
                },
            )
        calls.append(rows.count())
        return counted(rows)

    monkeypatch.setattr(scoring, "status_counts", another_run_commits_first)
    lines = []
    summary = score(plan(home, model, data, commit_every=2), on_commit=lines.append)
    assert calls == [20, 10, 20], "the lost group is recounted without the winner's shard"
    assert any("1 shards were committed by another run" in line for line in lines)
    assert summary.shards_skipped == 1 and summary.images == 30
    assert sorted(summary.shards_scored) == [f"shard-00000{i}.tar" for i in (1, 2, 3)]
    rows = manifest()
    mine = rows.filter(pc.equal(rows["run_id"], summary.run_id))
    assert mine.num_rows == 30 and "shard-000000.tar" not in mine["shard"].to_pylist()
    assert rows.num_rows == 31
    # pyiceberg must not rebase a lost append by itself: scoring re-checks shards instead.
    assert open_table(open_catalog(), "fiqa.manifest").properties["commit.retry.num-retries"] == "0"
