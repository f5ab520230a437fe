"""Filter policies: composable rules that decide which scored images a training set keeps.

Rules run in a fixed order, each over the images the previous rules kept, and an image's
`reason` is the first rule that dropped it (the rule's field name), or `kept`:

  status                             drop rows whose status is not ok (`ok_only`, default on)
  min_quality                        drop quality below a threshold
  drop_bottom_percent                drop the lowest X% of all images
  drop_bottom_percent_per_identity   drop the lowest X% of each identity
  top_k_per_identity                 keep each identity's k best
  min_images_per_identity            then drop identities left with fewer than N images

"The lowest X% of n images" is the floor(n * X / 100) lowest. Images are ranked by quality,
then dataset, then image_id, the same way for every rule (of two equal qualities the smaller
image_id ranks lower), so a policy gives the same selection every time. An identity is a
(dataset, identity) pair; rows without an identity belong to none, so the per-identity rules
leave them alone. A NaN quality counts as no quality. With `ok_only: false`, rows that are not
ok have no quality: the quality rules pass them through (top-k ranks them last) and
`min_images_per_identity` counts them.

The policy compiles to one DuckDB SELECT (window functions, no Python loop over rows). Over
a small manifest it runs as it is; over a large one it runs once per bucket of identities
(`pipeline/filtering.py`), with the global rule's cut-off computed beforehand (`Cut`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import FiqaError
from pipeline.query import ManifestQuery, QueryError, sql_literal
from pipeline.selection import KEPT

RULES = (
    "status",
    "min_quality",
    "drop_bottom_percent",
    "drop_bottom_percent_per_identity",
    "top_k_per_identity",
    "min_images_per_identity",
)


class PolicyError(FiqaError, ValueError):
    """A policy that cannot be applied to this manifest (no rows, unknown model_id)."""


class FilterPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str | None = Field(None, description="model whose scores to use (default: newest)")
    datasets: list[str] | None = Field(None, description="datasets to select from (default: all)")
    ok_only: bool = Field(True, description="drop images whose status is not ok")
    min_quality: float | None = Field(
        None, allow_inf_nan=False, description="drop images below this quality"
    )
    drop_bottom_percent: float | None = Field(
        None, ge=0, le=100, description="drop the lowest X percent of all images"
    )
    drop_bottom_percent_per_identity: float | None = Field(
        None, ge=0, le=100, description="drop the lowest X percent of each identity"
    )
    top_k_per_identity: int | None = Field(
        None, gt=0, description="keep at most the k best images of each identity"
    )
    min_images_per_identity: int | None = Field(
        None, gt=0, description="then drop identities left with fewer than N images"
    )


def newest_model(query: ManifestQuery, datasets: list[str] | None) -> str:
    """The model_id scored most recently (over `datasets`, when given)."""
    where = f"WHERE dataset IN ({_strings(datasets)})" if datasets else ""
    rows = query.sql(
        f"SELECT model_id FROM manifest {where} GROUP BY model_id "
        "ORDER BY max(scored_at) DESC, model_id LIMIT 1"
    )
    if not rows.num_rows:
        scope = f" in datasets {', '.join(datasets)}" if datasets else ""
        raise PolicyError(f"{query.table} has no scored rows{scope}")
    return rows["model_id"][0].as_py()


def unscored_datasets(query: ManifestQuery, model_id: str, datasets: list[str] | None) -> list[str]:
    """Datasets in scope (all when None) that have no rows of `model_id`."""
    where = f"WHERE dataset IN ({_strings(datasets)})" if datasets else ""
    rows = query.sql(
        f"SELECT dataset FROM manifest {where} GROUP BY dataset "
        f"HAVING NOT bool_or(model_id = {sql_literal(model_id)}) ORDER BY dataset"
    )
    return rows["dataset"].to_pylist()


def _strings(values: list[str]) -> str:
    return ", ".join(map(sql_literal, values))


def _drop(rule: str, condition: str) -> str:
    """A stage that sets `reason` to `rule` where the still-kept rows meet `condition`; it
    reads from the stage before it, named PREVIOUS here."""
    return (
        f"SELECT * REPLACE (CASE WHEN reason IS NULL AND ({condition}) THEN '{rule}' "
        "ELSE reason END AS reason) FROM PREVIOUS"
    )


# Worst first; top-k reverses it, so every rule ranks ties the same way.
RANK = "quality, dataset, image_id"
BEST_FIRST = "quality DESC NULLS LAST, dataset DESC, image_id DESC"
IDENTITY = "identity IS NOT NULL"


@dataclass(frozen=True)
class Cut:
    """The global rule's cut-off: the last image it drops, in the policy's order (quality,
    dataset, image_id); all None when it drops none."""

    quality: float | None = None
    dataset: str | None = None
    image_id: str | None = None

    def condition(self) -> str:
        """Still-kept scored rows that rank at or below the cut-off."""
        if self.quality is None:
            return "FALSE"
        q = (
            f"CAST('{self.quality!r}' AS DOUBLE)"
            if math.isinf(self.quality)
            else repr(self.quality)
        )
        d, i = sql_literal(self.dataset), sql_literal(self.image_id)
        return (
            f"reason IS NULL AND quality IS NOT NULL AND (quality < {q} OR (quality = {q} AND "
            f"(dataset < {d} OR (dataset = {d} AND image_id <= {i}))))"
        )


def _lowest_fraction(percent: float, by_identity: bool) -> str:
    """Row is among the floor(n * percent / 100) lowest-quality rows of its scope."""
    scope = "reason IS NULL AND quality IS NOT NULL" + (f" AND {IDENTITY}" if by_identity else "")
    group = f"({scope}), dataset, identity" if by_identity else f"({scope})"
    rank = f"row_number() OVER (PARTITION BY {group} ORDER BY {RANK})"
    count = f"count(*) OVER (PARTITION BY {group})"
    return f"{scope} AND {rank} <= floor({count} * {percent!r} / 100 + 1e-9)"


def policy_sql(policy: FilterPolicy, model_id: str, cut: Cut | None = None) -> str:
    """The SELECT that yields the selection rows (ARROW_SCHEMA of pipeline/selection.py).
    `cut`: the global rule's cut-off, when the query sees only a part of the manifest."""
    where = [f"model_id = {sql_literal(model_id)}"]
    if policy.datasets:
        where.append(f"dataset IN ({_strings(policy.datasets)})")
    stages = [
        "SELECT dataset, image_id, shard, identity, status, "
        "CASE WHEN isnan(quality) THEN NULL ELSE quality END AS quality, model_id, "
        "CAST(NULL AS VARCHAR) AS reason FROM manifest WHERE " + " AND ".join(where)
    ]
    if policy.ok_only:
        stages.append(_drop("status", "status IS DISTINCT FROM 'ok'"))
    if policy.min_quality is not None:
        stages.append(_drop("min_quality", f"quality < {policy.min_quality!r}"))
    if policy.drop_bottom_percent:
        condition = (
            _lowest_fraction(policy.drop_bottom_percent, by_identity=False)
            if cut is None
            else cut.condition()
        )
        stages.append(_drop("drop_bottom_percent", condition))
    if policy.drop_bottom_percent_per_identity:
        condition = _lowest_fraction(policy.drop_bottom_percent_per_identity, by_identity=True)
        stages.append(_drop("drop_bottom_percent_per_identity", condition))
    if policy.top_k_per_identity is not None:
        rank = (
            "row_number() OVER (PARTITION BY (reason IS NULL AND identity IS NOT NULL), "
            f"dataset, identity ORDER BY {BEST_FIRST})"
        )
        condition = f"{IDENTITY} AND {rank} > {policy.top_k_per_identity}"
        stages.append(_drop("top_k_per_identity", condition))
    if policy.min_images_per_identity is not None:
        count = "count(*) OVER (PARTITION BY (reason IS NULL), dataset, identity)"
        condition = f"{IDENTITY} AND {count} < {policy.min_images_per_identity}"
        stages.append(_drop("min_images_per_identity", condition))
    ctes = [f"s0 AS ({stages[0]})"]
    for i, stage in enumerate(stages[1:], 1):
        ctes.append(f"s{i} AS ({stage.replace('FROM PREVIOUS', f'FROM s{i - 1}')})")
    last = f"s{len(stages) - 1}"
    return (
        f"WITH {', '.join(ctes)} SELECT dataset, image_id, shard, identity, status, quality, "
        f"model_id, reason IS NULL AS keep, coalesce(reason, '{KEPT}') AS reason FROM {last}"
    )


def apply_policy(query: ManifestQuery, policy: FilterPolicy):
    """(selection rows, model_id used) for `policy` over the query's manifest snapshot."""
    model_id = policy.model_id or newest_model(query, policy.datasets)
    try:
        rows = query.sql(policy_sql(policy, model_id))
    except QueryError as e:
        raise PolicyError(f"applying the policy failed: {e}") from None
    if not rows.num_rows:
        raise PolicyError(
            f"{query.table} has no rows for model {model_id}"
            + (f" in datasets {', '.join(policy.datasets)}" if policy.datasets else "")
        )
    return rows, model_id
