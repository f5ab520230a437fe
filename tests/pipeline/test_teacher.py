"""A pretrained teacher's CR as the quality target: labelling passes and their use in training."""

import collections
import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from models.artifact import load_artifact, save_artifact
from models.losses import ClassReduce, certainty_ratio, true_cosine
from models.vit_fiqa import create_model
from pipeline import teacher
from pipeline.evaluation import dlib_fr
from pipeline.evaluation.fr_models import FrModelSpec
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synth.dataset import SynthSpec, write_synthetic
from pipeline.synth.generation import generate
from pipeline.synth.sampling import DegradationPolicy
from pipeline.synth.types import PIXEL_DEGRADATIONS
from pipeline.training.data import DataSpec
from pipeline.training.run import fit
from pipeline.training.spec import TrainingError, TrainSpec
from tests.builders import tiny_run

IDENTITIES, PER_IDENTITY = 6, 8


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("faces"))
    fs, path = filesystem(root)
    spec = SynthSpec(identities=IDENTITIES, per_identity=PER_IDENTITY)
    write_synthetic(spec, get_format("wds"), fs, path, shard_size=16, workers=1)
    return root


@pytest.fixture(scope="module")
def artifact_teacher(tmp_path_factory) -> FrModelSpec:
    """One of our own artifacts as the teacher: a real FR model that needs no extra."""
    directory = str(tmp_path_factory.mktemp("teacher") / "model")
    torch.manual_seed(1)
    save_artifact(create_model("vit-fiqa-micro").eval(), directory, preset="vit-fiqa-micro")
    return FrModelSpec(uri=directory)


def plan(
    faces: str, root: str, fr: FrModelSpec, copies: int = 1, identities: int = IDENTITIES
) -> teacher.Plan:
    classes = {f"train-{i:06d}": i for i in range(identities)}
    return teacher.Plan(fr, "wds", {}, None, None, classes, copies, seed=0, root=root)


def shards(faces: str) -> list[tuple[str, object]]:
    return [(uri, s) for uri, listed in DataSpec("wds", (faces,)).shards() for s in listed]


def table(root: str, kind: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted(glob.glob(f"{root}/{kind}/*")))


def test_certainty_ratios_in_class_blocks_match_the_training_loss(monkeypatch):
    monkeypatch.setattr(teacher, "CLASS_BLOCK", 3)  # 10 classes: blocks of 3, 3, 3 and 1
    g = torch.Generator().manual_seed(0)
    embedding = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    centres = F.normalize(torch.randn(10, 16, generator=g), dim=1)
    labels = torch.randint(0, 10, (50,), generator=g)
    ours = teacher.certainty_ratios(embedding.numpy(), labels.numpy(), centres.numpy())
    cos = embedding @ centres.T
    owned = torch.ones(50, dtype=torch.bool)
    reduce = ClassReduce()
    expected = certainty_ratio(cos, true_cosine(cos, owned, labels, reduce), owned, labels, reduce)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_copy_is_drawn_the_same_wherever_and_copy_zero_is_the_image():
    image = generate(0, 0, seed=0, split="train", policy=DegradationPolicy.none())
    pixels = np.stack([image.image] * 3)
    ids = np.array(["a", "b", "c"], dtype=object)
    ok = np.array([True, True, False])
    out, rows, copy = teacher.with_copies(pixels, ids, 2, seed=0, ok=ok)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert copy.tolist() == [0, 1, 2] * 3
    assert (out[copy == 0] == pixels).all()
    assert (out[6:] == pixels[2]).all()  # an unreadable image is never degraded
    again, _, _ = teacher.with_copies(pixels, ids, 2, seed=0, ok=ok)
    assert (again == out).all()
    assert teacher.copy_degradations("a", 1, 0) != teacher.copy_degradations("b", 1, 0)
    assert teacher.copy_degradations("a", 1, 0) != teacher.copy_degradations("a", 1, 1)
    assert teacher.copy_degradations("a", 0, 0) == ()


def test_copies_are_jpeg_and_occlusion_more_often_and_every_kind_still_occurs():
    drawn = [teacher.copy_degradations(f"id-{i}", 1, 0) for i in range(4000)]
    assert all(len(d) == 1 for d in drawn)
    kinds = collections.Counter(d[0].name for d in drawn)
    rest = 1 - sum(share for _, share in teacher.COPY_SHARES)
    for kind in PIXEL_DEGRADATIONS:
        share = dict(teacher.COPY_SHARES).get(kind, 0) + rest / len(PIXEL_DEGRADATIONS)
        assert abs(kinds[kind] / len(drawn) - share) < 0.03, (kind, kinds[kind])
    assert abs(np.mean([d[0].severity for d in drawn]) - 0.5) < 0.03


def test_labels_hold_the_cr_of_every_image_and_copy_and_are_reused(
    ray_local, faces, artifact_teacher, tmp_path
):
    root = str(tmp_path / "teacher")
    labelled = teacher.label(plan(faces, root, artifact_teacher), shards(faces), print)
    assert labelled == IDENTITIES * PER_IDENTITY * 2

    # The CR again, on the driver from the descriptors: centres are the means of the as-read
    # images less their overall mean, CR = CCS / (NNCCS + 1) against the centred rows.
    described = table(root, "descriptors").to_pandas()
    d = np.stack(described["descriptor"].to_numpy()).astype(np.float64)
    label, as_read = described["label"].to_numpy(), described["copy"].to_numpy() == 0
    mean = d[as_read].mean(axis=0)
    centres = np.stack([d[as_read & (label == c)].mean(axis=0) for c in range(IDENTITIES)])
    centres = F.normalize(torch.tensor(centres - mean), dim=1)
    rows = F.normalize(torch.tensor(d - mean), dim=1)
    cos, target = rows @ centres.T, torch.tensor(label)
    owned, reduce = torch.ones(len(d), dtype=torch.bool), ClassReduce()
    cr = certainty_ratio(cos, true_cosine(cos, owned, target, reduce), owned, target, reduce)
    labels = table(root, "labels").to_pandas().merge(described, on=["image_id", "copy"])
    key = described["image_id"] + "/" + described["copy"].astype(str)
    expected = dict(zip(key, cr.numpy(), strict=True))
    got = labels["image_id"] + "/" + labels["copy"].astype(str)
    np.testing.assert_allclose(labels["cr"], [expected[k] for k in got], rtol=1e-4, atol=1e-5)
    assert labels["cr"].std() > 0.01

    files = sorted(glob.glob(f"{root}/*/*"))
    written = [os.path.getmtime(f) for f in files]
    assert teacher.label(plan(faces, root, artifact_teacher), shards(faces), print) == labelled
    assert [os.path.getmtime(f) for f in files] == written
    with pytest.raises(teacher.TeacherError, match="another teacher, copy count"):
        teacher.label(plan(faces, root, artifact_teacher, copies=2), shards(faces), print)


def test_a_shard_without_a_labelled_image_gets_empty_files(
    ray_local, faces, artifact_teacher, tmp_path
):
    root = str(tmp_path / "teacher")
    # Shards of 16 images hold two identities each: the third shard has none of these four.
    four = plan(faces, root, artifact_teacher, copies=0, identities=4)
    assert teacher.label(four, shards(faces), print) == 4 * PER_IDENTITY
    sizes = sorted(len(pq.read_table(f)) for f in glob.glob(f"{root}/labels/*"))
    assert sizes == [0, 16, 16]


def test_a_teacher_that_cannot_be_loaded_is_refused_before_any_task(faces, tmp_path):
    missing = FrModelSpec(uri=str(tmp_path / "no-model"))
    with pytest.raises(teacher.TeacherError, match=r"teacher .*no-model"):
        teacher.label(plan(faces, str(tmp_path / "t"), missing), shards(faces), print)
    assert not (tmp_path / "t").exists()


def taught(faces: str, tmp_path, fr: FrModelSpec, **overrides) -> TrainSpec:
    return tiny_run(faces, tmp_path, **{"augment": ["flip"], "teacher": fr, **overrides})


def test_a_run_with_a_teacher_regresses_the_teachers_cr(
    ray_local, faces, artifact_teacher, tmp_path
):
    fit(taught(faces, tmp_path, artifact_teacher))
    trained = load_artifact(str(tmp_path / "model")).training["trained"]
    assert trained["teacher_rows_per_image"] == 2
    # 96 rows in 12 equal batches: the epoch's mean target is the mean of every label.
    (epoch,) = trained["epochs"]
    assert epoch["step"] == 12
    labels = table(str(tmp_path / "runs" / "run" / "teacher"), "labels")
    assert epoch["cr_mean"] == pytest.approx(float(np.mean(labels.column("cr"))), abs=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"degrade": 0.5}, "fresh degradations have no teacher CR"),
        ({"augment": ["flip", "blur"]}, "augmentation blur changes what the teacher"),
    ],
)
def test_a_teacher_refuses_what_would_change_the_images_after_labelling(
    faces, artifact_teacher, tmp_path, overrides, message
):
    with pytest.raises(TrainingError, match=message):
        fit(taught(faces, tmp_path, artifact_teacher, **overrides))


@pytest.mark.skipif(not dlib_fr.installed(), reason="needs the dlib extra")
def test_dlibs_cr_falls_on_the_degraded_copies(ray_local, faces, tmp_path):
    root = str(tmp_path / "teacher")
    teacher.label(plan(faces, root, FrModelSpec(uri="dlib")), shards(faces), print)
    labels = table(root, "labels")
    cr, copy = labels.column("cr").to_numpy(), labels.column("copy").to_numpy()
    assert cr[copy == 0].mean() > cr[copy == 1].mean() + 0.05
