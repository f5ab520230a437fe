import pytest

from jobs.cli import main
from jobs.config import ConfigError, validate
from jobs.score import ScoreConfig

BASE = {"model": "m", "data": "s3://bucket/faces/ms1mv2", "format": "rec"}


def test_plan_from_flags():
    plan = validate(ScoreConfig, {**BASE, "actors": "2,8", "gpus": "0.5"}).plan()
    assert plan.actors == (2, 8) and plan.gpus_per_actor == 0.5
    assert plan.dataset == "ms1mv2" and plan.table == "fiqa.manifest"
    assert validate(ScoreConfig, {**BASE, "actors": "3"}).plan().actors == (3, 3)


def test_the_cluster_decides_unless_told():
    plan = validate(ScoreConfig, BASE).plan()
    assert (plan.actors, plan.gpus_per_actor, plan.threads_per_actor) == (None, None, None)
    assert plan.cpus_per_actor is None and plan.commit_interval == 60


@pytest.mark.parametrize("gpus", ["-1", "some"])
def test_bad_gpu_counts_are_refused(gpus):
    with pytest.raises(ConfigError, match=r"gpus \(--gpus\)"):
        validate(ScoreConfig, {**BASE, "gpus": gpus})


@pytest.mark.parametrize("actors", ["0", "8,2", "a", "1,2,3"])
def test_bad_actor_counts_are_refused(actors):
    with pytest.raises(ConfigError, match=r"actors \(--actors\)"):
        validate(ScoreConfig, {**BASE, "actors": actors})


def test_bad_catalog_and_missing_fields_are_refused_before_any_work(tmp_path, capsys):
    config = tmp_path / "score.yaml"
    config.write_text("catalog:\n  nme: typo\n")
    assert (
        main(["score", "--config", str(config), "--model", "m", "--data", "d", "--format", "wds"])
        == 2
    )
    assert (
        "catalog.nme (YAML key catalog): Extra inputs are not permitted" in capsys.readouterr().err
    )
    assert main(["score", "--data", "d", "--format", "wds"]) == 2
    assert "model (--model): Field required" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path))
    assert (
        main(
            ["score", "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--format", "wds"]
        )
        == 2
    )
    assert "not a model artifact" in capsys.readouterr().err


def test_no_shards_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from models.artifact import save_artifact
    from models.vit_fiqa import create_model

    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    save_artifact(create_model("vit-fiqa-micro"), str(tmp_path / "m"), preset=None)
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "score",
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(tmp_path / "empty"),
                "--format",
                "wds",
            ]
        )
        == 2
    )
    assert "no wds shards found" in capsys.readouterr().err
