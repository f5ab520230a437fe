import json
import subprocess
import sys

import pytest
from safetensors.torch import load as load_safetensors

from jobs.cli import main
from jobs.train import TrainConfig
from models.artifact import load_artifact
from pipeline.augment import AUGMENTATIONS
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synth.dataset import SynthSpec, write_synthetic


def synth_on(uri: str, identities: int, per_identity: int, split: str) -> None:
    fs, path = filesystem(uri)
    spec = SynthSpec(identities=identities, per_identity=per_identity, split=split)
    write_synthetic(spec, get_format("wds"), fs, path, shard_size=16, workers=1)


@pytest.mark.slow
def test_train_from_s3_to_s3_with_two_workers(s3_bucket, tmp_path):
    data, evaluation = f"s3://{s3_bucket}/train", f"s3://{s3_bucket}/eval"
    synth_on(data, 6, 8, "train")
    synth_on(evaluation, 4, 4, "eval")
    out = f"s3://{s3_bucket}/models/m1"
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: [{data}]\nformat: wds\neval_data: {evaluation}\npreset: vit-fiqa-micro\n"
        "epochs: 2\nbatch_size: 8\nwarmup_epochs: 1\nholdout_fraction: 0.1\n"
        "num_workers: 2\ncpus_per_worker: 0.5\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "train",
            "--config",
            str(config),
            "--out",
            out,
            "--storage-path",
            f"s3://{s3_bucket}/runs",
            "--run-name",
            "e2e",
            "--loss",
            "arcface",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()
    assert last[-1].startswith(f"artifact: {out} (model_id ")
    assert last[-2] == f"checkpoints: {s3_bucket}/runs/e2e"
    fs, path = filesystem(out)
    artifact = load_artifact(path, fs=fs)
    trained = artifact.training["trained"]
    assert trained["classes"] == 6 and trained["spec"]["loss"] == "arcface"
    assert [e["epoch"] for e in trained["epochs"]] == [1, 2]
    for key in (
        "loss",
        "ce",
        "accuracy",
        "cr_mean",
        "holdout_spearman",
        "verification_accuracy",
        "tar_at_fmr",
    ):
        assert key in trained["epochs"][-1], key
    identities = json.loads(fs.cat(f"{path}/identities.json"))
    assert identities == sorted(identities) and len(identities) == 6
    centres = load_safetensors(fs.cat(f"{path}/{trained['centres_file']}"))["weight"]
    assert centres.shape == (6, artifact.model.config.fr_dim)  # both workers' slices
    assert fs.ls(f"{s3_bucket}/runs/e2e")


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--batch-size", "7", "--num-workers", "2"], "not divisible by num_workers"),
        (["--warmup-epochs", "30"], "warmup_epochs 30.0 > epochs 20"),
        (["--augment", "rotate"], "augment (--augment)"),
        (["--holdout-fraction", "0.7"], "holdout_fraction (--holdout-fraction)"),
        (["--preset", "vit-huge"], "preset (--preset)"),
        (["--epochs", "0"], "epochs (--epochs)"),
        (["--seed", "-1"], "seed (--seed)"),
        (["--num-workers", "0"], "num_workers (--num-workers)"),
        (["--gpus", "-1"], "gpus (--gpus)"),
    ],
)
def test_bad_configs_are_refused_before_any_ray_work(flags, field, capsys, monkeypatch):
    import jobs.train

    monkeypatch.setattr(jobs.train, "fit", lambda spec: pytest.fail("training started"))
    args = ["train", "--data", "/nowhere", "--format", "wds", "--out", "/tmp/x", *flags]
    assert main(args) == 2
    assert field in capsys.readouterr().err


def test_bad_yaml_values_name_their_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data: [/nowhere]\nformat: wds\nout: /tmp/x\nloss: softmax\nlr: -1\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss (--loss)" in err and "lr (--lr)" in err


def test_a_teacher_sets_the_defaults_that_keep_its_cr_true():
    required = {"data": ["/nowhere"], "format": "wds", "out": "/tmp/x"}
    plain = TrainConfig(**required).spec()
    assert (plain.teacher, plain.augmentations, plain.degrade) == (None, AUGMENTATIONS, None)
    taught = TrainConfig(**required, teacher="dlib").spec()
    assert (taught.teacher.uri, taught.augmentations) == ("dlib", ("flip",))
    assert taught.teacher_copies == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment", "flip", "blur"], "augmentation blur changes what the teacher measured"),
        (["--degrade", "0.5"], "fresh degradations have no teacher CR"),
    ],
)
def test_what_would_change_a_teachers_images_is_refused_before_ray(flags, message, capsys):
    args = ["train", "--data", "/nowhere", "--format", "wds", "--out", "/tmp/x", "--teacher"]
    assert main([*args, "dlib", *flags]) == 2
    assert message in capsys.readouterr().err
