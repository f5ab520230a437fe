"""Job configuration: pydantic models, loaded from YAML and overridden by CLI flags.

Each verb declares one `JobConfig` subclass; its fields become the verb's flags (`out_dir` ->
`--out-dir`), `--config FILE.yaml` supplies any of them, and flags given on the command line
win. Everything is validated before any work starts, and an invalid value is reported with the
name of its field.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.catalog import CatalogConfig
from pipeline.errors import FiqaError
from pipeline.manifest import DEFAULT_TABLE
from pipeline.settings import DataSettings
from pipeline.storage import StorageOptions


class ConfigError(FiqaError, ValueError):
    """An invalid job configuration; the message names every bad field."""


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(JobConfig):
    """Where object storage is. Credentials come from the standard AWS variables only."""

    endpoint_url: str | None = Field(None, description="S3 endpoint (default: AWS_ENDPOINT_URL)")
    region: str | None = Field(None, description="S3 region (default: AWS_REGION)")

    def storage(self) -> StorageOptions:
        """Resolved on the driver: Ray workers get the driver's endpoint and credentials."""
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region).with_environment()


class TableConfig(StorageConfig):
    """A job on a manifest table: its name and the Iceberg catalog holding it."""

    table: str = Field(DEFAULT_TABLE, description="manifest table, namespace.table")
    catalog: CatalogConfig = Field(
        CatalogConfig(), description="Iceberg catalog (YAML only)", json_schema_extra={"cli": False}
    )


class JsonSummary(JobConfig):
    json_output: bool = Field(
        False,
        description="print the summary as one JSON line last",
        json_schema_extra={"flag": "--json"},
    )


class DataConfig(DataSettings, StorageConfig):
    """A dataset to read, and the object storage it is on."""


def flag_of(name: str, field) -> str:
    extra = field.json_schema_extra or {}
    return extra.get("flag", "--" + name.replace("_", "-"))


def source_of(name: str, field) -> str:
    """Where a field's value is set: its flag, or the YAML file for structured settings."""
    if (field.json_schema_extra or {}).get("cli") is False:
        return f"YAML key {name}"
    return flag_of(name, field)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[JobConfig]) -> None:
    """One flag per field (positional where the field says so) plus `--config FILE.yaml`."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="read settings from a YAML file; flags given here override it",
    )
    for name, field in config_cls.model_fields.items():
        extra = field.json_schema_extra or {}
        if extra.get("cli") is False:  # structured settings come from the YAML file only
            continue
        if field.is_required():
            default = " (required)"
        else:  # a None default says nothing the description does not
            default = "" if field.default is None else f" (default: {field.default!r})"
        options: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            # argparse formats help with %: a literal one ("95% intervals") is doubled.
            "help": f"{field.description or ''}{default}".replace("%", "%%"),
        }
        annotation = _unwrap_optional(field.annotation)
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(annotation) is Literal:
                options["choices"] = [str(c) for c in typing.get_args(annotation)]
            else:
                options["metavar"] = extra.get("metavar", name.upper())
            if typing.get_origin(annotation) is list:
                options["nargs"] = "+"
        if extra.get("positional"):
            del options["dest"]
            parser.add_argument(name, nargs="?", **options)
        else:
            parser.add_argument(flag_of(name, field), **options)


def _unwrap_optional(annotation):
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def config_from_args(config_cls: type[JobConfig], args: argparse.Namespace) -> JobConfig:
    """Merge `--config` YAML and explicit flags into a validated config."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in vars(args).items() if k in config_cls.model_fields})
    return validate(config_cls, values)


def validate(config_cls: type[JobConfig], values: dict[str, Any]) -> JobConfig:
    try:
        return config_cls.model_validate(values)
    except ValidationError as e:
        fields = config_cls.model_fields
        lines = []
        for err in e.errors():
            name = ".".join(str(p) for p in err["loc"]) or "config"
            head = str(err["loc"][0]) if err["loc"] else ""
            where = f"{name} ({source_of(head, fields[head])})" if head in fields else name
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None


def add_verb(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    """A verb's parser, with `summary` as its help and description; `configure_verb` (in the
    verb's module) adds the rest."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def configure_verb(
    parser: argparse.ArgumentParser,
    config_cls: type[JobConfig],
    run: typing.Callable[[JobConfig], int | None],
    *,
    example: str,
) -> argparse.ArgumentParser:
    """Give a verb's parser the flags of `config_cls`, an example, and `run(config)` to do."""
    parser.epilog = f"example:\n  {example}"
    add_config_arguments(parser, config_cls)
    parser.set_defaults(
        func=lambda args: run(config_from_args(config_cls, args)), config_cls=config_cls
    )
    return parser
