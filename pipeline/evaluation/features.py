"""One pass over a labelled dataset: every quality method's score and every FR model's
embedding of each readable labelled image.

Evaluation sets are thousands of images, not billions, so the pass runs in this process and
the results stay in memory. Rows that cannot be used are counted by status, never dropped
silently: read and decode failures keep their status, unlabelled rows count as
`no_identity`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from models.artifact import Artifact
from pipeline.datasource import shard_rows
from pipeline.decode import DecodeOptions, decode_batch, to_model_input
from pipeline.evaluation import methods
from pipeline.evaluation.fr_models import FrModel, Metric, resize
from pipeline.formats import get_format
from pipeline.status import OK
from pipeline.storage import StorageOptions, filesystem


@dataclass
class Features:
    image_ids: list[str]
    identities: np.ndarray  # (N,) str
    quality: dict[str, np.ndarray]  # method -> (N,) float
    embeddings: dict[str, np.ndarray]  # FR model -> (N, D) float32, L2-normalised if cosine
    metrics: dict[str, Metric]  # FR model -> how its embeddings are compared
    statuses: dict[str, int]  # every row read, by status

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class SerFiq:
    passes: int
    dropout: float


class FeaturePass:
    """Accumulates features batch by batch; `own_fr` names the evaluated (token-mode) model's
    FR head."""

    def __init__(
        self,
        artifact: Artifact,
        own_fr: str,
        wanted: Sequence[str],
        fr_models: Sequence[FrModel],
        crfiqa: Artifact | None,
        ser_fiq: SerFiq,
        seed: int,
        device: torch.device,
    ):
        self.device = device
        self.model = artifact.model.eval().to(device)
        self.options = DecodeOptions.from_input_spec(artifact.input)
        self.own_fr, self.wanted, self.fr_models = own_fr, set(wanted), fr_models
        self.crfiqa = crfiqa
        if crfiqa is not None:
            crfiqa.model.eval().to(device)
            self.crfiqa_options = DecodeOptions.from_input_spec(crfiqa.input)
        self.ser_fiq, self.seed = ser_fiq, seed
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.ids: list[str] = []
        self.identities: list[str] = []
        self.quality: dict[str, list[np.ndarray]] = {}
        self.embeddings: dict[str, list[np.ndarray]] = {}

    def _add(self, store: dict[str, list[np.ndarray]], name: str, values) -> None:
        if isinstance(values, torch.Tensor):
            values = values.float().cpu().numpy()
        store.setdefault(name, []).append(np.asarray(values))

    @torch.inference_mode()
    def add(self, rows: list[dict], pixels: np.ndarray) -> None:
        model = self.model
        # ViTFIQA.forward of a token-mode model, opened up: SER-FIQ needs the FR head's input.
        on_device = torch.as_tensor(pixels).to(self.device)
        tokens = model.forward_tokens(to_model_input(on_device, self.options))
        fr_input = tokens[:, 1:].flatten(1)
        embedding = model.feature(fr_input)
        self._add(self.quality, methods.VIT_FIQA, model.head_qs(tokens[:, 0]).squeeze(1))
        self._add(self.embeddings, self.own_fr, embedding)
        if "embedding-norm" in self.wanted:
            self._add(self.quality, "embedding-norm", embedding.float().norm(dim=1))
        if "ser-fiq" in self.wanted:
            scores = methods.ser_fiq(
                model,
                fr_input,
                passes=self.ser_fiq.passes,
                dropout=self.ser_fiq.dropout,
                generator=self.generator,
            )
            self._add(self.quality, "ser-fiq", scores)
        y = methods.luminance(pixels)
        for name, measure in methods.IMAGE_MEASURES.items():
            if name in self.wanted:
                self._add(self.quality, name, measure(y))
        if self.crfiqa is not None:
            resized = torch.as_tensor(resize(pixels, self.crfiqa_options.size)).to(self.device)
            x = to_model_input(resized, self.crfiqa_options)
            self._add(self.quality, methods.CRFIQA, self.crfiqa.model(x)[1])
        for fr in self.fr_models:
            self._add(self.embeddings, fr.name, fr.embed(pixels))
        self.ids.extend(r["image_id"] for r in rows)
        self.identities.extend(r["identity"] for r in rows)

    def result(self, statuses: Counter[str]) -> Features:
        if not self.ids:
            raise ValueError("no readable labelled images")
        quality = {k: np.concatenate(v).astype(np.float64) for k, v in self.quality.items()}
        if "random" in self.wanted:
            quality["random"] = np.random.default_rng(self.seed).random(len(self.ids))
        metrics: dict[str, Metric] = {self.own_fr: "cosine"}
        metrics.update((fr.name, fr.metric) for fr in self.fr_models)
        embeddings = {}
        for name, parts in self.embeddings.items():
            e = np.concatenate(parts).astype(np.float32)
            if metrics[name] == "cosine":
                e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            embeddings[name] = e
        return Features(
            self.ids,
            np.asarray(self.identities),
            quality,
            embeddings,
            metrics,
            dict(sorted(statuses.items())),
        )


def compute_features(
    features: FeaturePass,
    data: str,
    format_name: str,
    *,
    storage: StorageOptions | None = None,
    format_options: dict | None = None,
    batch_size: int = 128,
) -> Features:
    data_fs, root = filesystem(data, storage)
    shards = get_format(format_name, **(format_options or {})).list_shards(data_fs, root)
    statuses: Counter[str] = Counter()
    pending: list[dict] = []

    def flush() -> None:
        decoded = decode_batch({"image": [r["image"] for r in pending]}, features.options)
        ok = decoded["status"] == OK
        statuses.update(decoded["status"].tolist())
        if ok.any():
            features.add(
                [r for r, good in zip(pending, ok, strict=True) if good], decoded["pixels"][ok]
            )
        bar.update(len(pending))
        pending.clear()

    with tqdm(unit="img", desc="eval features") as bar:
        for shard in shards:
            for row in shard_rows(format_name, format_options or {}, data, storage, shard):
                if row["status"] != OK:
                    statuses[row["status"]] += 1
                elif row["identity"] is None:
                    statuses["no_identity"] += 1
                else:
                    pending.append(row)
                    if len(pending) == batch_size:
                        flush()
        if pending:
            flush()
    return features.result(statuses)
