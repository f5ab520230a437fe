"""The inference graph, as deployed outside PyTorch (ONNX).

Input `image`: uint8 (N, 3, H, W), RGB, H = W = the artifact's input size, raw pixels 0..255.
The normalisation of the artifact's config (`models.normalisation`, as on the PyTorch side) is
part of the graph, so a caller only decodes and resizes. Outputs: `embedding` float32
(N, fr_dim), not L2-normalised, and `quality` float32 (N,), the raw quality score (higher is
better). N is dynamic.
"""

from __future__ import annotations

import torch
from torch import nn

from models.artifact import InputSpec
from models.normalisation import normalise, pixel_scale
from models.vit_fiqa import ViTFIQA

INPUT_NAME = "image"
OUTPUT_NAMES = ("embedding", "quality")
OPSET = 18


class InferenceGraph(nn.Module):
    """uint8 RGB pixels -> (embedding, quality), normalisation included."""

    def __init__(self, model: ViTFIQA, spec: InputSpec):
        super().__init__()
        self.model = model
        self.register_buffer("mean", pixel_scale(spec.mean))
        self.register_buffer("std", pixel_scale(spec.std))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(normalise(image.float(), self.mean, self.std))


def export_onnx(model: ViTFIQA, spec: InputSpec, path: str) -> None:
    """Write the inference graph of `model` (switched to eval mode) to `path`."""
    try:
        import onnx  # noqa: F401  (the exporter needs both; fail early with a clear message)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "ONNX export needs the 'onnx' extra: pip install 'vit-fiqa-curation[onnx]'"
        ) from e
    graph = InferenceGraph(model, spec).eval()
    example = torch.zeros(2, 3, spec.size, spec.size, dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.save(path)
