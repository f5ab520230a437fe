"""What the report shows, asked of the manifest in SQL: only aggregates and a few rows leave
DuckDB, so a report over billions of rows holds kilobytes in Python.

Histograms are binned inside DuckDB over the range of their panel (a model's qualities are
not comparable with another model's), which a first query finds. Per-identity spread uses mean
and standard deviation, which DuckDB aggregates in constant memory per identity (spilling past
the connection's memory limit); exact quantiles are computed only for the few identities drawn
as box plots. Every query scans the manifest once and they run in turn, so the report holds
one scan's buffers at a time beside DuckDB's capped aggregates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.query import ManifestQuery, sql_identifier, sql_literal

BINS = 40
SPREAD_BINS = 24
MIN_IDENTITY_IMAGES = 2  # a spread needs two images
MOST_SPREAD = 12  # identities per model in the box plot
THUMBNAILS = 24  # per group: lowest, around the median, highest
BOX_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SCORED = "status = 'ok' AND quality IS NOT NULL AND NOT isnan(quality)"


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # BINS + 1
    counts: dict[str, np.ndarray]  # series -> BINS counts


@dataclass(frozen=True)
class Spread:
    """Identities of one model binned by (mean quality, standard deviation)."""

    mean_edges: np.ndarray
    std_edges: np.ndarray
    counts: np.ndarray  # (std bins, mean bins)

    @property
    def identities(self) -> int:
        return int(self.counts.sum())


def _span(lo: float, hi: float) -> tuple[float, float]:
    """`lo`, `span` of a panel; a constant panel is given a unit range centred on its value."""
    return (lo, hi - lo) if hi > lo else (lo - 0.5, 1.0)


def _case(key: str, values: dict[str, float]) -> str:
    """A SQL expression giving, for each value of column `key`, its number in `values`: what
    a join with the few panels would do, without a second relation for DuckDB to hash."""
    whens = " ".join(
        f"WHEN {sql_literal(k)} THEN CAST('{v!r}' AS DOUBLE)" for k, v in values.items()
    )
    return f"CASE {key} {whens} END"


def _bin(value: str, bins: int, lo: str, span: str) -> str:
    return f"least(CAST(floor(({value} - {lo}) / {span} * {bins}) AS INTEGER), {bins - 1})"


def overview(query: ManifestQuery) -> list[dict]:
    """Per dataset and model: images, ok images, identities (approximate), quality range."""
    return query.sql(
        "SELECT dataset, model_id, count(*) AS images, "
        "count(*) FILTER (WHERE status = 'ok') AS ok, "
        "approx_count_distinct(identity) AS identities, "
        f"min(quality) FILTER (WHERE {SCORED}) AS q_min, "
        f"approx_quantile(quality, 0.5) FILTER (WHERE {SCORED}) AS q_median, "
        f"max(quality) FILTER (WHERE {SCORED}) AS q_max, max(scored_at) AS last_scored "
        "FROM manifest GROUP BY dataset, model_id ORDER BY dataset, model_id"
    ).to_pylist()


def statuses(query: ManifestQuery) -> list[dict]:
    """Images per dataset, model and status, with one error message as an example."""
    return query.sql(
        "SELECT dataset, model_id, coalesce(status, '(none)') AS status, count(*) AS images, "
        "min(error) AS example FROM manifest GROUP BY ALL "
        "ORDER BY dataset, model_id, images DESC, status"
    ).to_pylist()


def histograms(query: ManifestQuery, source: str, bins: int = BINS) -> dict[str, Histogram]:
    """Quality histograms per panel; `source` is a SELECT of (panel, series, quality)."""
    rows = (
        f"SELECT panel, series, quality FROM ({source}) "
        "WHERE quality IS NOT NULL AND NOT isnan(quality)"
    )
    bounds = query.sql(
        f"SELECT panel, min(quality) AS lo, max(quality) AS hi FROM ({rows}) GROUP BY panel"
    ).to_pylist()
    ranges = {b["panel"]: _span(b["lo"], b["hi"]) for b in bounds}
    if not ranges:
        return {}
    binned = _bin(
        "quality",
        bins,
        _case("panel", {p: r[0] for p, r in ranges.items()}),
        _case("panel", {p: r[1] for p, r in ranges.items()}),
    )
    counted = query.sql(
        f"SELECT panel, series, {binned} AS bin, count(*) AS n FROM ({rows}) GROUP BY ALL"
    ).to_pylist()
    steps = np.arange(bins + 1) / bins
    out = {p: Histogram(lo + span * steps, {}) for p, (lo, span) in ranges.items()}
    for row in counted:
        counts = out[row["panel"]].counts.setdefault(row["series"], np.zeros(bins, np.int64))
        counts[row["bin"]] = row["n"]
    return out


def quality_histograms(query: ManifestQuery) -> dict[str, Histogram]:
    """Per model_id, one series per dataset (ok rows)."""
    return histograms(
        query,
        f"SELECT model_id AS panel, dataset AS series, quality FROM manifest WHERE {SCORED}",
    )


_IDENTITIES = (
    "SELECT model_id, dataset, identity, count(*) AS images, avg(quality) AS mean, "
    f"stddev_samp(quality) AS std FROM manifest WHERE {SCORED} AND identity IS NOT NULL "
    f"GROUP BY model_id, dataset, identity HAVING count(*) >= {MIN_IDENTITY_IMAGES}"
)


def identity_spread(query: ManifestQuery) -> dict[str, Spread]:
    """Per model_id: identities with at least two ok images, by mean and std of quality."""
    bounds = query.sql(
        "SELECT model_id, min(mean) AS lo, max(mean) AS hi, max(std) AS s_hi "
        f"FROM ({_IDENTITIES}) GROUP BY model_id"
    ).to_pylist()
    if not bounds:
        return {}
    means = {b["model_id"]: _span(b["lo"], b["hi"]) for b in bounds}
    stds = {b["model_id"]: b["s_hi"] if b["s_hi"] > 0 else 1.0 for b in bounds}
    mean_bin = _bin(
        "mean",
        SPREAD_BINS,
        _case("model_id", {m: r[0] for m, r in means.items()}),
        _case("model_id", {m: r[1] for m, r in means.items()}),
    )
    std_bin = _bin("std", SPREAD_BINS, "0", _case("model_id", stds))
    counted = query.sql(
        f"SELECT model_id, {mean_bin} AS mean_bin, {std_bin} AS std_bin, count(*) AS n "
        f"FROM ({_IDENTITIES}) GROUP BY ALL"
    ).to_pylist()
    steps = np.arange(SPREAD_BINS + 1) / SPREAD_BINS
    out = {
        m: Spread(
            lo + span * steps, stds[m] * steps, np.zeros((SPREAD_BINS, SPREAD_BINS), np.int64)
        )
        for m, (lo, span) in means.items()
    }
    for row in counted:
        out[row["model_id"]].counts[row["std_bin"], row["mean_bin"]] += row["n"]
    return out


def most_spread(
    query: ManifestQuery, models: Iterable[str], per_model: int = MOST_SPREAD
) -> list[dict]:
    """The identities with the largest quality std of each model, with exact box-plot
    quantiles. One top-N query per model: a window over all identities would hold them."""
    top = []
    for model_id in sorted(models):
        top += query.sql(
            f"SELECT model_id, dataset, identity, std FROM ({_IDENTITIES}) "
            f"WHERE model_id = {sql_literal(model_id)} "
            f"ORDER BY std DESC, dataset, identity LIMIT {int(per_model)}"
        ).to_pylist()
    if not top:
        return []
    chosen = " OR ".join(
        f"(model_id = {sql_literal(r['model_id'])} AND dataset = {sql_literal(r['dataset'])} "
        f"AND identity = {sql_literal(r['identity'])})"
        for r in top
    )
    quantiles = ", ".join(map(str, BOX_QUANTILES))
    found = query.sql(
        "SELECT model_id, dataset, identity, count(*) AS images, "
        f"quantile_cont(quality, [{quantiles}]) AS quantiles "
        f"FROM manifest WHERE {SCORED} AND ({chosen}) GROUP BY ALL"
    ).to_pylist()
    boxes = {(r["model_id"], r["dataset"], r["identity"]): r for r in found}
    return [{**r, **boxes[r["model_id"], r["dataset"], r["identity"]]} for r in top]


def thumbnail_rows(
    query: ManifestQuery, model_id: str, selection: str | None = None, n: int = THUMBNAILS
) -> list[dict]:
    """The `n` lowest, `n` nearest the (approximate) median and `n` highest quality ok images of
    `model_id`, each with its group; with a selection, the reason it gave each image. Each
    group is a query of its own, so that one scan runs at a time."""
    where = f"{SCORED} AND model_id = {sql_literal(model_id)}"
    columns = "dataset, image_id, shard, identity, quality, model_id"
    order = "dataset, image_id"

    def group(name: str, by: str) -> list[dict]:
        return query.sql(
            f"SELECT '{name}' AS grp, {columns} FROM manifest WHERE {where} "
            f"ORDER BY {by}, {order} LIMIT {int(n)}"
        ).to_pylist()

    middle = query.sql(
        f"SELECT approx_quantile(quality, 0.5) AS middle FROM manifest WHERE {where}"
    ).to_pylist()[0]["middle"]
    rows = group("lowest", "quality") + group("highest", "quality DESC")
    if middle is not None:
        rows += group("median", f"abs(quality - CAST('{middle!r}' AS DOUBLE))")
    reasons: dict[tuple[str, str], str] = {}
    if selection is not None and rows:
        # The selection is asked for these rows alone: a join would hash all of it.
        image_ids = ", ".join(sorted({sql_literal(r["image_id"]) for r in rows}))
        found = query.sql(
            f"SELECT dataset, image_id, reason FROM {sql_identifier(selection)} "
            f"WHERE model_id = {sql_literal(model_id)} AND image_id IN ({image_ids})"
        ).to_pylist()
        reasons = {(r["dataset"], r["image_id"]): r["reason"] for r in found}
    for row in rows:
        row["reason"] = reasons.get((row["dataset"], row["image_id"]))
    rank = {"lowest": 0, "median": 1, "highest": 2}
    return sorted(rows, key=lambda r: (rank[r["grp"]], r["quality"], r["dataset"], r["image_id"]))


def selection_histogram(query: ManifestQuery, selection: str) -> Histogram | None:
    """Series `kept` and `dropped` over the selection's scored images (their sum: before)."""
    found = histograms(
        query,
        "SELECT 'selection' AS panel, CASE WHEN keep THEN 'kept' ELSE 'dropped' END AS series, "
        f"quality FROM {sql_identifier(selection)}",
    )
    return found.get("selection")
