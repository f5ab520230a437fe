import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.artifact import load_artifact
from models.vit_fiqa import create_model
from pipeline.faults import TRAIN_STEP
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synth.dataset import SynthSpec, write_synthetic
from pipeline.synth.generation import generate
from pipeline.synth.sampling import DegradationPolicy
from pipeline.training.data import degraded, is_holdout
from pipeline.training.loop import lr_factor, parameter_groups
from pipeline.training.run import fit, fitted_batch
from pipeline.training.spec import TrainingError
from tests.builders import tiny_run


def test_lr_warms_up_linearly_then_decays_to_zero():
    factors = [lr_factor(s, 4, 12) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in itertools.pairwise(factors[4:]))
    assert lr_factor(12, 4, 12) == 0.0


def test_no_weight_decay_for_tokens_norms_and_biases():
    model = create_model("vit-fiqa-micro")
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "qs_token", "norm.weight"} <= skipped
    assert "blocks.0.mlp.fc1.bias" in skipped
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"blocks.0.attn.qkv.weight", "feature.0.weight"} <= decayed
    assert len(skipped) + len(decayed) == len(names)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_holdout_membership_is_stable_and_near_the_fraction():
    ids = [f"shard/{i}" for i in range(5000)]
    held = [i for i in ids if is_holdout(i, 0.1)]
    assert held == [i for i in ids if is_holdout(i, 0.1)]
    assert 400 < len(held) < 600
    assert not any(is_holdout(i, 0.0) for i in ids)


def test_degraded_changes_about_its_share_of_the_readable_images_and_no_other():
    clean = np.stack(
        [
            generate(i, 0, seed=0, split="train", policy=DegradationPolicy.none()).image
            for i in range(4)
        ]
    )
    pixels = np.repeat(clean, 50, axis=0)  # 200 images
    ok = np.arange(200) % 4 != 0  # every fourth unreadable: left as it is
    before = pixels.copy()
    degraded(pixels, ok, 0.5)
    changed = (pixels != before).any(axis=(1, 2, 3))
    assert not changed[~ok].any()
    # Some degradations at a severity near 0 leave the pixels as they were.
    assert 0.3 * ok.sum() < changed.sum() < 0.7 * ok.sum()  # 0.5: 5 sd either side
    after = pixels.copy()
    degraded(pixels, ok, 0.0)
    assert (pixels == after).all()


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("faces"))
    fs, path = filesystem(root)
    write_synthetic(
        SynthSpec(identities=6, per_identity=8),
        get_format("wds"),
        fs,
        path,
        shard_size=16,
        workers=1,
    )
    return root


def summary(out: str) -> dict:
    return load_artifact(out).training["trained"]


def last_centre_slices(trained: dict) -> list[torch.Tensor]:
    """The class-centre slice of each worker in the run's last checkpoint."""
    last = max(p for p in Path(trained["run_path"]).glob("checkpoint_*") if p.is_dir())
    files = sorted(last.glob("centres-*.pt"))
    return [torch.load(f, weights_only=True)["weight"] for f in files]


@pytest.mark.slow
def test_a_stopped_run_resumes_from_its_checkpoint(ray_local, faces, tmp_path, monkeypatch):
    # 48 images / 2 workers / 4 per worker: 6 steps; checkpoints at steps 2 and 4.
    monkeypatch.setenv(TRAIN_STEP, f"3:{tmp_path / 'fault'}")
    with pytest.raises(TrainingError, match="rerun with the same run name"):
        fit(tiny_run(faces, tmp_path))  # the worker dies at step 3; no retries allowed
    assert (tmp_path / "fault").exists()
    assert not (tmp_path / "model").exists()
    monkeypatch.delenv(TRAIN_STEP)
    result = fit(tiny_run(faces, tmp_path))  # same run name: resumes
    trained = summary(result.out)
    assert trained["resumed_from_steps"] == [2]
    assert trained["steps"] == trained["steps_per_epoch"] == 6
    assert [e["epoch"] for e in trained["epochs"]] == [1]
    identities = json.loads((tmp_path / "model" / "identities.json").read_text())
    assert identities == sorted(identities) and len(identities) == trained["classes"] == 6
    # Each worker checkpointed its own half of the classes; the artifact keeps the network
    # alone and the centres beside it, in class order.
    slices = last_centre_slices(trained)
    assert [len(s) for s in slices] == [3, 3]
    centres = load_file(tmp_path / "model" / trained["centres_file"])["weight"]
    torch.testing.assert_close(centres, torch.cat(slices), rtol=0, atol=0)
    assert not any("centres" in k for k in load_artifact(result.out).model.state_dict())


@pytest.mark.slow
def test_a_run_resumes_with_another_worker_count(ray_local, faces, tmp_path, monkeypatch):
    monkeypatch.setenv(TRAIN_STEP, f"3:{tmp_path / 'fault'}")
    with pytest.raises(TrainingError):
        fit(tiny_run(faces, tmp_path))  # 2 workers, 3 classes each; checkpoint at step 2
    monkeypatch.delenv(TRAIN_STEP)
    result = fit(tiny_run(faces, tmp_path, num_workers=1, cpus_per_worker=1.0))
    trained = summary(result.out)
    assert trained["resumed_from_steps"] == [2]
    assert trained["steps"] == 6
    assert [len(s) for s in last_centre_slices(trained)] == [6]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_from_the_last_checkpoint(
    ray_local, faces, tmp_path, monkeypatch
):
    monkeypatch.setenv(TRAIN_STEP, f"5:{tmp_path / 'fault'}")
    result = fit(tiny_run(faces, tmp_path, max_failures=1, epochs=2, warmup_epochs=1))
    assert (tmp_path / "fault").exists()
    trained = summary(result.out)
    assert trained["resumed_from_steps"] == [4]
    assert trained["steps"] == 12
    assert [e["epoch"] for e in trained["epochs"]] == [1, 2]
    assert all(e["skipped"] == 0 for e in trained["epochs"])


def test_a_batch_larger_than_the_training_set_is_clamped_to_it_with_a_warning(
    faces, tmp_path, caplog
):
    big = tiny_run(faces, tmp_path, batch_size=1024, num_workers=2)
    assert fitted_batch(big, 47).batch_size == 46  # whole batches for both workers
    assert "larger than the 47 training images: training with batches of 46" in caplog.text
    caplog.clear()
    assert fitted_batch(big, 2048) == big and fitted_batch(big, 1) == big  # 1: refused later
    assert not caplog.text


def test_init_from_an_artifact_of_another_architecture_is_refused(faces, tmp_path):
    from models.artifact import save_artifact

    save_artifact(create_model("vit-fiqa-micro", mode="crfiqa"), str(tmp_path / "a"), preset=None)
    with pytest.raises(TrainingError, match="crfiqa mode"):
        fit(tiny_run(faces, tmp_path, init_from=str(tmp_path / "a")))


@pytest.mark.slow
def test_bench_train_times_a_bare_loop_and_fiqa_train(ray_local, tmp_path):
    from pipeline.bench.train import bench_train

    result = bench_train(
        "vit-fiqa-micro", batch_size=8, steps=4, workers=(2,), workdir=str(tmp_path), log=print
    )
    assert result["bench"] == "train" and result["steps"] == 4
    bare, ray2 = result["bare_images_per_s"], result["ray_2_workers_images_per_s"]
    assert bare > 0 and ray2 > 0
    assert result["ratio_2_workers_to_bare"] == pytest.approx(ray2 / bare, rel=0.02)
