"""Dataset formats by name: `get_format("wds")`."""

from __future__ import annotations

from typing import Literal, get_args

from pipeline.formats.base import DatasetFormat
from pipeline.formats.folder import FolderFormat
from pipeline.formats.parquet import ParquetFormat
from pipeline.formats.rec import RecFormat
from pipeline.formats.wds import WdsFormat

FORMATS: dict[str, type[DatasetFormat]] = {
    f.name: f for f in (WdsFormat, RecFormat, FolderFormat, ParquetFormat)
}
# The same names as a type, for configuration fields.
FormatName = Literal["wds", "rec", "folder", "parquet"]
assert set(get_args(FormatName)) == set(FORMATS)


def get_format(name: str, **options) -> DatasetFormat:
    try:
        return FORMATS[name](**options)
    except KeyError:
        raise ValueError(f"unknown format {name!r}; available: {', '.join(FORMATS)}") from None
