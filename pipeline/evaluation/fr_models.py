"""FR models whose comparison scores the quality methods are measured against.

Besides the evaluated model's own FR head: any artifact of our training job (typically one
trained with another seed and loss, to show that the quality transfers to a model it was not
trained with) and any ONNX FR model, with its input size, normalisation, colour order, layout
and dtype given in its spec; and `dlib`, dlib's pretrained ResNet descriptor (`dlib_fr`, an
optional extra). Every model embeds the same decoded crops. The comparison score is the cosine
of two embeddings, or for a model whose metric is Euclidean (dlib) the negative distance.
"""

from __future__ import annotations

import posixpath
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from models.artifact import load_artifact
from pipeline.decode import DecodeOptions, to_model_input
from pipeline.evaluation.dlib_fr import DlibFr
from pipeline.storage import StorageOptions, filesystem, parse_uri

DLIB = "dlib"  # the URI (and kind) of dlib's descriptor
Metric = Literal["cosine", "euclidean"]


class FrModelSpec(BaseModel):
    """An FR model: an artifact URI, or an ONNX file and how to feed it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="artifact directory, .onnx file (local or s3://) or dlib")
    name: str | None = Field(None, description="label in results (default: the file name)")
    kind: Literal["artifact", "onnx", "dlib"] | None = Field(
        None, description="default: dlib for the URI dlib, onnx for a .onnx file, else artifact"
    )
    # ONNX only; an artifact's own input spec is used for an artifact.
    size: int = Field(112, gt=0, description="input height = width")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    colour_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = Field(
        "float32", description="float32: (p / 255 - mean) / std; uint8: raw pixels"
    )
    output: int = Field(0, ge=0, description="index of the output holding the embedding")

    @property
    def resolved_kind(self) -> str:
        if self.kind:
            return self.kind
        if self.uri == DLIB:
            return DLIB
        return "onnx" if self.uri.endswith(".onnx") else "artifact"

    @property
    def label(self) -> str:
        return self.name or posixpath.basename(parse_uri(self.uri).path.rstrip("/"))


class FrModel(Protocol):
    name: str
    metric: Metric

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB crops -> float32 (N, D) embeddings."""


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[1] == size:
        return pixels
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ArtifactFr:
    metric: Metric = "cosine"

    def __init__(self, spec: FrModelSpec, storage: StorageOptions | None, device: torch.device):
        fs, path = filesystem(spec.uri, storage)
        artifact = load_artifact(path, fs=fs)
        self.name = spec.name or f"{spec.label} ({artifact.model_id[:12]})"
        self.device = device
        self.model = artifact.model.eval().to(device)
        self.options = DecodeOptions.from_input_spec(artifact.input)

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> np.ndarray:
        resized = torch.as_tensor(resize(pixels, self.options.size)).to(self.device)
        return self.model(to_model_input(resized, self.options))[0].float().cpu().numpy()


class OnnxFr:
    metric: Metric = "cosine"

    def __init__(self, spec: FrModelSpec, storage: StorageOptions | None):
        try:
            import onnxruntime
        except ImportError as e:
            raise RuntimeError(
                "ONNX FR models need onnxruntime: pip install 'vit-fiqa-curation[onnx]'"
            ) from e
        fs, path = filesystem(spec.uri, storage)
        with fs.open(path, "rb") as f:
            graph = f.read()
        self.session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.spec = spec
        self.name = spec.label

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        s = self.spec
        x = resize(pixels, s.size)
        if s.colour_order == "BGR":
            x = x[..., ::-1]
        if s.dtype == "float32":
            x = (x.astype(np.float32) / 255 - np.float32(s.mean)) / np.float32(s.std)
        if s.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})
        return np.asarray(outputs[s.output], dtype=np.float32)


def load_fr_model(
    spec: FrModelSpec, storage: StorageOptions | None = None, device: str = "cpu"
) -> FrModel:
    """The FR model `spec` names; an artifact runs on `device`, ONNX and dlib on the CPU."""
    kind = spec.resolved_kind
    if kind == DLIB:
        return DlibFr(spec.label)
    if kind == "onnx":
        return OnnxFr(spec, storage)
    return ArtifactFr(spec, storage, torch.device(device))
