"""`fiqa filter`: apply a filter policy to the manifest and store the selection (Iceberg)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import Field

from jobs.config import ConfigError, JsonSummary, TableConfig, configure_verb, validate
from pipeline.catalog import open_catalog
from pipeline.filtering import Filtered, filter_manifest
from pipeline.policy import RULES, FilterPolicy
from pipeline.selection import selection_name


class FilterConfig(TableConfig, JsonSummary, FilterPolicy):
    policy: str | None = Field(
        None,
        description="policy YAML with any of the rule settings; rule flags override it",
        json_schema_extra={"metavar": "FILE.yaml"},
    )
    out: str = Field(description="selection name (a table beside the manifest) or ns.table")

    def filter_policy(self) -> FilterPolicy:
        """The policy file's rules, overridden by the rules given as flags or in --config."""
        values = {}
        if self.policy:
            try:
                values = yaml.safe_load(Path(self.policy).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read policy file {self.policy}: {e}") from None
            if not isinstance(values, dict):
                raise ConfigError(f"policy file {self.policy} must hold a mapping of rules")
        given = self.model_dump(include=set(FilterPolicy.model_fields), exclude_unset=True)
        return validate(FilterPolicy, {**values, **given})


def run(config: FilterConfig) -> None:
    policy = config.filter_policy()
    name = selection_name(config.table, config.out)
    storage = config.storage()
    catalog = open_catalog(config.catalog, storage)
    result = filter_manifest(catalog, config.table, name, policy, storage)
    print_filtered(name, result)
    if config.json_output:
        print(json.dumps({"selection": name, "snapshot": result.snapshot_id, **result.info}))


def print_filtered(name: str, result: Filtered) -> None:
    summary, model_id = result.info["summary"], result.model_id
    print(
        f"model {model_id}: {summary['images']} images of {summary['identities']} identities "
        f"in {', '.join(summary['datasets'])}"
    )
    if result.unscored:
        print(
            f"warning: model {model_id} has not scored {', '.join(result.unscored)}; those "
            "datasets are not in the selection (choose another --model-id, or --datasets)"
        )
    for rule in (*RULES, "kept"):
        if rule in summary["by_reason"]:
            print(f"  {rule:<34} {summary['by_reason'][rule]:>10}")
    print(
        f"kept {summary['kept']} images and {summary['identities_kept']} identities; dropped "
        f"{summary['dropped']} images and {summary['identities_dropped']} identities"
    )
    print(f"selection: {name} (snapshot {result.snapshot_id})")


def configure(parser) -> None:
    configure_verb(
        parser,
        FilterConfig,
        run,
        example="fiqa filter --table faces.quality --drop-bottom-percent-per-identity 10 "
        "--min-images-per-identity 10 --out ms1mv2_clean",
    )
