"""dlib's pretrained descriptor as an FR model, on real faces (skipped without the extra)."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from jobs.cli import main
from pipeline.evaluation.dlib_fr import DISTANCE_THRESHOLD, DlibFr
from pipeline.face_check import align_faces, packaged_photos
from pipeline.formats import get_format
from pipeline.storage import filesystem
from pipeline.synth.dataset import SynthSpec, write_synthetic
from tests.pipeline.test_scoring import artifact


@pytest.fixture(scope="module")
def photos():
    found = packaged_photos()
    if len(found) < 3:
        pytest.skip("the packaged real photos need insightface and scikit-image installed")
    return found


SHRINK = 0.8


def second_image(photo, tmp_path):
    """Another image of the same faces: the photo mirrored, shrunk and saved as a JPEG, so
    that detection, landmarks and alignment all run again on other pixels."""
    image = Image.open(photo).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize((round(image.width * SHRINK), round(image.height * SHRINK)))
    path = tmp_path / f"{photo.stem}-second.jpg"
    image.save(path, quality=90)
    return path, Image.open(photo).width


def test_two_images_of_one_real_face_are_closer_than_two_different_faces(photos, tmp_path):
    first, second = [], []
    for photo in photos:
        faces = align_faces(photo)
        path, width = second_image(photo, tmp_path)
        again = align_faces(path)
        # Where each face must be in the second image: mirrored, then shrunk.
        centres = np.array([f.landmarks.mean(0) for f in again])
        for face in faces:
            x, y = face.landmarks.mean(0)
            offsets = np.linalg.norm(centres - np.array([width - 1 - x, y]) * SHRINK, axis=1)
            assert offsets.min() < 8, face.source  # found again, where it must be
            first.append(face)
            second.append(again[offsets.argmin()])
    fr = DlibFr()
    a = fr.embed(np.stack([f.crop for f in first]))
    b = fr.embed(np.stack([f.crop for f in second]))
    distance = np.linalg.norm(a[:, None] - b[None], axis=2)  # rows: faces, columns: again
    same = np.diag(distance)
    different = distance[~np.eye(len(a), dtype=bool)]
    assert len(a) >= 6
    assert same.max() < DISTANCE_THRESHOLD < np.median(different)
    for i in range(len(a)):  # each face is nearest to its own second image, both ways
        assert distance[i].argmin() == i and distance[:, i].argmin() == i, first[i].source


def test_fiqa_eval_with_dlib_compares_by_distance(tmp_path, capsys):
    fs, root = filesystem(str(tmp_path / "faces"))
    write_synthetic(
        SynthSpec(identities=4, per_identity=4, split="eval"), get_format("wds"), fs, root
    )
    model = artifact(tmp_path / "model")
    args = ["eval", "--model", model, "--data", root, "--format", "wds", "--fr-model", "dlib"]
    args += ["--methods", "sharpness", "--bootstrap", "0", "--out", str(tmp_path / "result")]
    assert main(args) == 0
    result = json.loads((tmp_path / "result" / "result.json").read_text())
    dlib = result["fr_models"][1]
    assert dlib["name"] == "dlib" and dlib["embedding_dim"] == 128
    assert dlib["similarity"] == "-distance"
    # Minus a Euclidean distance: never above 0, and genuine pairs are nearer on average.
    assert dlib["genuine"]["q99"] <= 0 and dlib["impostor"]["q99"] <= 0
    assert dlib["genuine"]["mean"] > dlib["impostor"]["mean"]
    assert "dlib: similarity (-distance)" in capsys.readouterr().out
