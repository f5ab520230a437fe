"""Value types shared by the pipeline's pydantic settings (and so by the verbs' flags).

`auto` settings are resolved against the cluster where the work runs, never on the client.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator

from pipeline.formats import FormatName


def auto_or(kind: type, least: float, what: str) -> PlainValidator:
    """A setting that is `auto` or a number of `kind`, at least `least` (`what` names it)."""

    def check(value: Any) -> str | float | int:
        if value == "auto":
            return value
        try:
            number = kind(value)
            valid = least <= number == float(value)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"expected auto or {what}, got {value!r}")
        return number

    return PlainValidator(check)


# How train, score and eval use GPUs: `auto` uses what is there (one GPU for each worker,
# scorer actor or evaluating process when the cluster has GPUs, none otherwise); a number
# is the GPUs each one gets (0: CPU only; a fraction shares a GPU).
Gpus = typing.Annotated[str | float, auto_or(float, 0, "a number of GPUs >= 0")]
# A number of workers: `auto` (from the cluster) or a whole number.
AutoCount = typing.Annotated[str | int, auto_or(int, 1, "a whole number >= 1")]


def gpus_or_none(value: Gpus) -> float | None:
    """A `Gpus` setting as a number, or None for auto."""
    return None if value == "auto" else float(value)


def check_preset(name: str) -> str:
    from models.presets import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return name


PresetName = typing.Annotated[str, AfterValidator(check_preset)]


# A dataset format's settings: structured, so from YAML only.
FormatOptions = typing.Annotated[
    dict[str, Any],
    Field(
        description="format settings (YAML only), e.g. parquet column names",
        json_schema_extra={"cli": False},
    ),
]
# The architecture every verb builds or measures unless told.
DEFAULT_PRESET = "vit-fiqa-cpu"


class DataSettings(BaseModel):
    """A dataset to read: URI and format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description="dataset URI: a local path, file://, s3:// or memory://")
    format: FormatName = Field(description="dataset format")
    format_options: FormatOptions = {}
