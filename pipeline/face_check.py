"""The real-face check: does a model's quality fall as real face photos are degraded?

Real photos that ship inside installed packages (insightface's `t1.jpg` group photo and
`Tom_Hanks_54745.png`, scikit-image's `astronaut.png`, matplotlib's `grace_hopper.jpg`) are
searched with dlib's face detector; each face found is aligned to the ArcFace 112x112 template
through dlib's 5-point landmarks (`dlib_fr.CHIP_LANDMARKS`: where those landmarks sit in an
aligned crop). Every face is then degraded in graded steps of every pixel-level degradation of
the synthetic data (`synth.sampling.sample_degradation`: the same code and severity scale, its
random choices fixed along a ladder), scored by the model, and compared by dlib's descriptor
with its clean crop, which shows whether a ladder really takes identity away.

Per face and kind, Spearman's rank correlation of severity with quality over the steps
(-1: quality falls at every step); the summary averages it over faces, then over kinds.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.artifact import Artifact
from pipeline.decode import DecodeOptions, to_model_input
from pipeline.evaluation.dlib_fr import CHIP_LANDMARKS, DlibFr, model_files
from pipeline.synth.degradations import degrade
from pipeline.synth.geometry import similarity
from pipeline.synth.sampling import sample_degradation
from pipeline.synth.types import PIXEL_DEGRADATIONS, SIZE

# (package, folder inside it, file): where the photos are, read from the installed package
# without importing it.
PHOTOS = (
    ("insightface", "data/images", "t1.jpg"),
    ("insightface", "data/images", "Tom_Hanks_54745.png"),
    ("skimage", "data", "astronaut.png"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
)
KINDS = PIXEL_DEGRADATIONS
SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MIN_DETECTION_SCORE = 0.5  # below it the HOG detector's hits here are not faces


@dataclass(frozen=True)
class Face:
    source: str  # photo file name and the face's index in it
    landmarks: np.ndarray  # (5, 2) dlib's landmarks in the photo, pixels
    crop: np.ndarray  # uint8 (112, 112, 3) RGB, aligned to the ArcFace template


def packaged_photos() -> list[Path]:
    """The photos among `PHOTOS` whose package is installed."""
    found = []
    for package, folder, name in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations)), folder, name)
        if path.is_file():
            found.append(path)
    return found


@functools.cache
def _landmarker():
    """dlib's HOG face detector and 5-point shape predictor, loaded once."""
    import dlib

    _, predictor_file = model_files()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_file)


def align_faces(photo: Path) -> list[Face]:
    """Every face dlib detects in `photo`, aligned by its 5 landmarks to the ArcFace crop."""
    detector, predictor = _landmarker()
    image = np.asarray(Image.open(photo).convert("RGB"))
    # The detector sees faces from 80 pixels; small photos are upsampled once for it.
    boxes, scores, _ = detector.run(image, int(max(image.shape[:2]) < 640), 0)
    faces = []
    for box, score in zip(boxes, scores, strict=True):
        if score < MIN_DETECTION_SCORE:
            continue
        shape = predictor(image, box)
        found = np.array([[p.x, p.y] for p in shape.parts()], dtype=float)
        # Crop pixel -> photo pixel, the inverse of the fit of the landmarks onto the crop.
        a, b, t = similarity(CHIP_LANDMARKS.astype(float), found)
        coefficients = (a, -b, t[0], b, a, t[1])
        crop = Image.fromarray(image).transform(
            (SIZE, SIZE), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC
        )
        faces.append(Face(f"{photo.name}#{len(faces)}", found, np.asarray(crop)))
    return faces


def ladder(face: Face, kind: str, seed: int) -> np.ndarray:
    """(steps, 112, 112, 3): the face degraded by `kind` at each of `SEVERITIES`."""
    steps = []
    for severity in SEVERITIES:
        rng = np.random.default_rng([seed, KINDS.index(kind)])  # same choices at every step
        degradation = sample_degradation(kind, severity, rng)
        steps.append(degrade(face.crop, [degradation]))
    return np.stack(steps)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (no ties expected: severities differ, qualities are
    continuous); 0 when either side is constant."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


@torch.inference_mode()
def quality(artifact: Artifact, pixels: np.ndarray) -> np.ndarray:
    options = DecodeOptions.from_input_spec(artifact.input)
    return artifact.model.eval()(to_model_input(pixels, options))[1].float().numpy()


def face_check(artifact: Artifact, photos: list[Path] | None = None, seed: int = 0) -> dict:
    """Spearman(severity, quality) and dlib's distance to the clean crop, per kind and step,
    over every face in `photos` (default: the packaged ones)."""
    photos = packaged_photos() if photos is None else photos
    faces = [face for photo in photos for face in align_faces(photo)]
    if not faces:
        raise ValueError("no faces found: install the photos' packages (see docs/benchmarks.md)")
    fr = DlibFr()
    clean = fr.embed(np.stack([face.crop for face in faces]))
    kinds = {}
    for kind in KINDS:
        correlations, distances, qualities = [], [], []
        for index, face in enumerate(faces):
            steps = ladder(face, kind, seed + index)
            q = quality(artifact, steps)
            qualities.append(q)
            correlations.append(spearman(np.array(SEVERITIES), q))
            distances.append(np.linalg.norm(fr.embed(steps) - clean[index], axis=1))
        kinds[kind] = {
            "spearman": float(np.mean(correlations)),
            "spearman_per_face": correlations,
            "mean_quality": np.mean(qualities, axis=0).tolist(),
            "dlib_distance_to_clean": np.mean(distances, axis=0).tolist(),
        }
    return {
        "faces": [face.source for face in faces],
        "severities": list(SEVERITIES),
        "kinds": kinds,
        "spearman_mean": float(np.mean([k["spearman"] for k in kinds.values()])),
        "spearman_worst_kind": max(kinds, key=lambda k: kinds[k]["spearman"]),
    }


def summary_lines(result: dict) -> list[str]:
    """A table: per kind, Spearman and mean quality and dlib distance to clean per step."""
    steps = "  ".join(f"{s:>4g}" for s in result["severities"])
    lines = [
        f"{len(result['faces'])} real faces; severity steps {steps}",
        f"{'kind':<14} {'Spearman':>8}  mean quality per step / dlib distance to clean per step",
    ]
    for kind, k in result["kinds"].items():
        quality = " ".join(f"{q:7.3f}" for q in k["mean_quality"])
        distance = " ".join(f"{d:.2f}" for d in k["dlib_distance_to_clean"])
        lines.append(f"{kind:<14} {k['spearman']:8.3f}  {quality} / {distance}")
    lines.append(
        f"mean Spearman over kinds {result['spearman_mean']:.3f}; "
        f"worst kind {result['spearman_worst_kind']}"
    )
    return lines
