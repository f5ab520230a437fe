"""A run's data on the driver and in Ray Data tasks: the datasets it reads, the held-out
split, the one listing pass, and the decoding, labelling and degrading UDF."""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray

from pipeline import teacher
from pipeline.datasource import read_samples
from pipeline.decode import DecodeOptions, decode_batch
from pipeline.formats import get_format
from pipeline.status import OK
from pipeline.storage import StorageOptions, filesystem
from pipeline.synth.degradations import degrade
from pipeline.synth.sampling import DegradationPolicy
from pipeline.synth.types import PIXEL_DEGRADATIONS


@dataclass(frozen=True)
class DataSpec:
    format: str
    uris: tuple[str, ...]
    storage: StorageOptions | None = None
    format_options: dict = field(default_factory=dict)

    def shards(self, shuffle_seed: int | None = None) -> list[tuple[str, list]]:
        """(dataset URI, its shards) for each dataset; with a seed, the shards in a shuffled
        order."""
        fmt = get_format(self.format, **self.format_options)
        listed = []
        for uri in self.uris:
            fs, root = filesystem(uri, self.storage)
            shards = fmt.list_shards(fs, root)
            if shuffle_seed is not None:
                random.Random(shuffle_seed).shuffle(shards)
            listed.append((uri, shards))
        return listed

    def read(self, shuffle_seed: int | None = None) -> ray.data.Dataset:
        """All samples; with a seed, the shards (so the read tasks) in a shuffled order, which
        mixes identities across blocks without materialising the dataset."""
        datasets = [
            read_samples(
                self.format,
                uri,
                storage=self.storage,
                format_options=self.format_options,
                shards=shards,
            )
            for uri, shards in self.shards(shuffle_seed)
        ]
        return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def is_holdout(image_id: str, fraction: float) -> bool:
    """Stable membership of the held-out split: the same images on every run and worker."""
    return zlib.crc32(image_id.encode()) % 10_000 < fraction * 10_000


@dataclass
class DataSummary:
    identities: list[str]  # class index -> identity string
    train_rows: int
    holdout_rows: int
    skipped: dict[str, int]  # status -> rows not used (read failures, no identity)


def summarise(ds: ray.data.Dataset, holdout_fraction: float) -> DataSummary:
    """One streaming pass over image_id, identity and status."""
    identities: set[str] = set()
    skipped: Counter[str] = Counter()
    train_rows = holdout_rows = 0
    columns = ds.select_columns(["image_id", "identity", "status"])
    for batch in columns.iter_batches(batch_format="pyarrow", batch_size=65536):
        for image_id, identity, status in zip(
            *(batch.column(c).to_pylist() for c in ("image_id", "identity", "status")),
            strict=True,
        ):
            if status != OK or identity is None:
                skipped[status if status != OK else "no_identity"] += 1
                continue
            identities.add(identity)
            if is_holdout(image_id, holdout_fraction):
                holdout_rows += 1
            else:
                train_rows += 1
    return DataSummary(sorted(identities), train_rows, holdout_rows, dict(skipped))


def prepare_batch(
    batch: dict[str, np.ndarray],
    classes: dict[str, int],
    options: DecodeOptions,
    holdout: bool | None,
    fraction: float,
    degrade: float,
    targets: teacher.Targets | None = None,
    copies: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Ray Data UDF: the batch's readable, labelled rows of the wanted split (`holdout`:
    only held-out rows, only the others, or None: all), decoded, with only what the loop
    needs (pixels, label, ok), a share `degrade` of them degraded (`degraded`). With teacher
    `targets`, each row is followed by its `copies` degraded copies, and `target` holds the
    teacher's CR of each (a row without one is not ok). Rows are chosen before decoding,
    which is the costly part."""
    wanted = (batch["status"] == OK) & np.array([i is not None for i in batch["identity"]])
    if holdout is not None:
        split = np.array([is_holdout(i, fraction) for i in batch["image_id"]], dtype=bool)
        wanted &= split == holdout
    batch = {name: column[wanted] for name, column in batch.items()}
    decoded = decode_batch(batch, options)
    if degrade:
        degraded(decoded["pixels"], decoded["status"] == OK, degrade)
    labels = np.array([classes.get(i, -1) for i in batch["identity"]], dtype=np.int64)
    ok = (decoded["status"] == OK) & (labels >= 0)
    if targets is None:
        return {"pixels": decoded["pixels"], "label": labels, "ok": ok.astype(bool)}
    pixels, rows, copy = teacher.with_copies(decoded["pixels"], batch["image_id"], copies, seed, ok)
    target = targets(batch["shard"][rows], batch["image_id"][rows], copy)
    ok = ok[rows] & ~np.isnan(target)
    return {"pixels": pixels, "label": labels[rows], "ok": ok, "target": target}


def degraded(pixels: np.ndarray, ok: np.ndarray, probability: float) -> None:
    """In place: each readable image, with `probability`, gets one pixel-level degradation of
    the synthetic data's catalogue (`synth.sampling.sample_degradation`, kind and severity uniform).

    The CR target is computed online by the FR head, which after a few epochs has fitted the
    images it trains on, degraded or not, so their CR no longer shows what a degradation costs.
    Drawn anew every epoch, a degradation is one the head has not fitted. The draws are not
    seeded: they are made where Ray Data decodes, whose order is not reproducible either."""
    policy = DegradationPolicy(enabled=PIXEL_DEGRADATIONS, probability=probability, mix=(1.0,))
    rng = np.random.default_rng()
    for i in np.flatnonzero(ok):
        pixels[i] = degrade(pixels[i], policy.sample(rng))


def labelled(
    ds: ray.data.Dataset,
    classes: dict[str, int],
    holdout: bool | None,
    fraction: float,
    degrade: float = 0.0,
    plan: teacher.Plan | None = None,
) -> ray.data.Dataset:
    """Rows of readable images (of the wanted split), decoded, labelled and `degraded`; with
    a teacher `plan`, with its copies and targets (`prepare_batch`)."""
    targets = {}
    if plan:
        targets = {
            "targets": teacher.Targets(plan.root, plan.storage),
            "copies": plan.copies,
            "seed": plan.seed,
        }
    return ds.map_batches(
        prepare_batch,
        batch_format="numpy",
        fn_kwargs={
            "classes": classes,
            "options": DecodeOptions(),
            "holdout": holdout,
            "fraction": fraction,
            "degrade": degrade,
            **targets,
        },
    )
