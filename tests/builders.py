"""Small datasets for tests (synthetic faces with some corrupt samples mixed in) and a tiny
training run over them."""

from __future__ import annotations

import io

from PIL import Image

from pipeline.formats import get_format
from pipeline.storage import StorageOptions, filesystem
from pipeline.synth.generation import generate
from pipeline.synth.sampling import DegradationPolicy
from pipeline.training.spec import TrainSpec

# What each kind of bad sample should become after decoding.
CORRUPT = {
    "text": (b"this is not an image", "decode_error"),
    "truncated": (None, "decode_error"),  # a real JPEG cut in half
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>', "unsupported"),
}


def face_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct synthetic faces as JPEG bytes (cheap enough for tests)."""
    out = []
    for i in range(count):
        image = generate(i % 7, i, seed=seed, split="train", policy=DegradationPolicy.none())
        buffer = io.BytesIO()
        Image.fromarray(image.image).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_faces(
    format_name: str,
    uri: str,
    *,
    identities: int,
    per_identity: int,
    corrupt_every: int = 0,
    shard_size: int = 20,
    prefix: str = "id",
    storage: StorageOptions | None = None,
) -> dict[str, str]:
    """Write a dataset; returns image_id -> the status scoring should record for it."""
    fs, root = filesystem(uri, storage)
    pool = face_jpegs(16)
    expected, n = {}, 0
    kinds = list(CORRUPT)
    with get_format(format_name).writer(fs, root, shard_size=shard_size) as writer:
        for i in range(identities):
            for j in range(per_identity):
                data, status = pool[n % len(pool)], "ok"
                if corrupt_every and n % corrupt_every == corrupt_every - 1:
                    kind = kinds[(n // corrupt_every) % len(kinds)]
                    data, status = CORRUPT[kind]
                    data = data or pool[0][: len(pool[0]) // 2]
                key = f"{prefix}{i:03d}_{j:03d}"
                expected[writer.write(key, f"{prefix}{i:03d}", data, "jpg")] = status
                n += 1
    return expected


def tiny_run(data: str, tmp_path, **overrides) -> TrainSpec:
    """A one-epoch run of the micro preset on two half-CPU workers over the wds faces at
    `data`, checkpointing every 2 steps, no retries; `overrides` replace any field."""
    values = dict(
        data=[data],
        format="wds",
        out=str(tmp_path / "model"),
        holdout_fraction=0.0,
        preset="vit-fiqa-micro",
        epochs=1,
        batch_size=8,
        warmup_epochs=0.5,
        augment=["flip", "blur"],
        num_workers=2,
        cpus_per_worker=0.5,
        storage_path=str(tmp_path / "runs"),
        run_name="run",
        checkpoint_every_steps=2,
        max_failures=0,
    )
    return TrainSpec(**{**values, **overrides})
