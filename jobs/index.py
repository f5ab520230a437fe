"""`fiqa index`: list a folder dataset once into Parquet index shards."""

from __future__ import annotations

from pydantic import Field, model_validator

from jobs.config import StorageConfig, configure_verb
from pipeline.formats.folder import INDEX_DIR, write_index
from pipeline.storage import filesystem, parse_uri


class IndexConfig(StorageConfig):
    data: str = Field(description="folder dataset URI (<root>/<identity>/<file>)")
    out: str | None = Field(
        None,
        description=f"index URI (default: <data>/{INDEX_DIR}); "
        "give the same to the folder format's 'index'",
    )
    rows_per_shard: int = Field(100_000, gt=0, description="images per index shard")

    @model_validator(mode="after")
    def same_storage(self):
        if self.out and parse_uri(self.out).protocol != parse_uri(self.data).protocol:
            raise ValueError("out must be on the same storage as data")
        return self


def run(config: IndexConfig) -> None:
    fs, root = filesystem(config.data, config.storage())
    out = parse_uri(config.out or config.data).join(*([] if config.out else [INDEX_DIR]))
    paths = write_index(fs, root, out.path, rows_per_shard=config.rows_per_shard)
    print(f"index: {len(paths)} shards at {out.uri}")


def configure(parser) -> None:
    configure_verb(
        parser,
        IndexConfig,
        run,
        example="fiqa index --data s3://faces/webface-folder",
    )
