"""`fiqa synth`: write a synthetic labelled face dataset, or draw a gallery of it."""

from __future__ import annotations

import os

from pydantic import Field, model_validator
from tqdm import tqdm

from jobs.config import StorageConfig, configure_verb
from pipeline.formats import FormatName, get_format
from pipeline.storage import filesystem, parse_uri
from pipeline.synth.dataset import SynthSpec, write_synthetic
from pipeline.synth.generation import gallery

GALLERY_MAX = 12


class SynthConfig(SynthSpec, StorageConfig):
    format: FormatName = Field("wds", description="format")
    out: str | None = Field(None, description="dataset URI to write")
    shard_size: int = Field(1000, gt=0, description="images per shard (wds, parquet)")
    workers: int = Field(os.cpu_count() or 1, ge=1, description="rendering processes")
    gallery: str | None = Field(
        None,
        description="instead of a dataset, draw a PNG grid of "
        f"identities x images (up to {GALLERY_MAX} each)",
    )

    @model_validator(mode="after")
    def needs_an_output(self):
        if not self.out and not self.gallery:
            raise ValueError("give --out (a dataset) or --gallery (a PNG)")
        return self

    def spec(self) -> SynthSpec:
        return SynthSpec.model_validate(self.model_dump(include=set(SynthSpec.model_fields)))


def run(config: SynthConfig) -> None:
    spec = config.spec()
    if config.gallery:
        image = gallery(
            min(config.identities, GALLERY_MAX),
            min(config.per_identity, GALLERY_MAX),
            seed=config.seed,
            split=config.split,
            policy=spec.policy(),
        )
        image.save(config.gallery)
        print(f"gallery: {config.gallery}")
        return
    fs, root = filesystem(config.out, config.storage())
    with tqdm(total=spec.images, unit="img", desc=f"synth {config.split}") as bar:
        result = write_synthetic(
            spec,
            get_format(config.format),
            fs,
            root,
            shard_size=config.shard_size,
            workers=config.workers,
            on_progress=bar.update,
        )
    print(
        f"{result.images} images of {result.identities} identities in {result.seconds:.1f} s "
        f"({result.images_per_s:.0f} images/s on {config.workers} processes)"
    )
    print(f"dataset: {parse_uri(config.out).uri} (format {config.format})")


def configure(parser) -> None:
    configure_verb(
        parser,
        SynthConfig,
        run,
        example="fiqa synth --identities 100 --per-identity 20 --format rec "
        "--out s3://faces/synth-train",
    )
