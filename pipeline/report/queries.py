"""What the report shows, asked of the manifest in SQL: only aggregates and a few rows leave
DuckDB, so a report over billions of rows holds kilobytes in Python.

Histograms are binned inside DuckDB over the range of their panel (a model's qualities are
not comparable with another model's). Per-identity spread uses mean and standard deviation,
which DuckDB aggregates in constant memory per identity; exact quantiles are computed only for
the few identities drawn as box plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.query import ManifestQuery, sql_literal

BINS = 40
SPREAD_BINS = 24
MIN_IDENTITY_IMAGES = 2  # a spread needs two images
MOST_SPREAD = 12  # identities per model in the box plot
THUMBNAILS = 24  # per group: lowest, around the median, highest
BOX_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SCORED = "status = 'ok' AND quality IS NOT NULL AND NOT isnan(quality)"


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


def _edges(lo_column: str, hi_column: str) -> str:
    """`lo`, `span` of a panel; a constant panel is given a unit range centred on its value."""
    return (
        f"CASE WHEN {hi_column} > {lo_column} THEN {lo_column} ELSE {lo_column} - 0.5 END AS lo, "
        f"CASE WHEN {hi_column} > {lo_column} THEN {hi_column} - {lo_column} ELSE 1.0 END AS span"
    )


def _bin(value: str, bins: int, lo: str = "lo", span: str = "span") -> str:
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
    rows = query.sql(
        f"WITH rows AS (SELECT panel, series, quality FROM ({source}) "
        "WHERE quality IS NOT NULL AND NOT isnan(quality)), "
        "bounds AS (SELECT panel, min(quality) AS q_lo, max(quality) AS q_hi FROM rows "
        "GROUP BY panel), "
        f"edges AS (SELECT panel, {_edges('q_lo', 'q_hi')} FROM bounds) "
        f"SELECT panel, series, lo, span, {_bin('quality', bins)} AS bin, count(*) AS n "
        "FROM rows JOIN edges USING (panel) GROUP BY ALL ORDER BY panel, series, bin"
    ).to_pylist()
    out: dict[str, Histogram] = {}
    for row in rows:
        if row["panel"] not in out:
            edges = row["lo"] + row["span"] * np.arange(bins + 1) / bins
            out[row["panel"]] = Histogram(edges, {})
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
    rows = query.sql(
        f"WITH ids AS ({_IDENTITIES}), "
        "ranged AS (SELECT model_id, mean, std, "
        "min(mean) OVER m AS m_lo, max(mean) OVER m AS m_hi, max(std) OVER m AS s_hi "
        "FROM ids WINDOW m AS (PARTITION BY model_id)), "
        f"edges AS (SELECT model_id, mean, std, {_edges('m_lo', 'm_hi')}, "
        "CASE WHEN s_hi > 0 THEN s_hi ELSE 1.0 END AS s_span FROM ranged) "
        f"SELECT model_id, lo, span, s_span, {_bin('mean', SPREAD_BINS)} AS mean_bin, "
        f"{_bin('std', SPREAD_BINS, lo='0', span='s_span')} AS std_bin, count(*) AS n "
        "FROM edges GROUP BY ALL ORDER BY model_id"
    ).to_pylist()
    out: dict[str, Spread] = {}
    steps = np.arange(SPREAD_BINS + 1) / SPREAD_BINS
    for row in rows:
        if row["model_id"] not in out:
            out[row["model_id"]] = Spread(
                row["lo"] + row["span"] * steps,
                row["s_span"] * steps,
                np.zeros((SPREAD_BINS, SPREAD_BINS), np.int64),
            )
        out[row["model_id"]].counts[row["std_bin"], row["mean_bin"]] += row["n"]
    return out


def most_spread(query: ManifestQuery, per_model: int = MOST_SPREAD) -> list[dict]:
    """The identities with the largest quality std per model, with exact box-plot quantiles."""
    quantiles = ", ".join(map(str, BOX_QUANTILES))
    return query.sql(
        f"WITH ids AS ({_IDENTITIES}), "
        "top AS (SELECT model_id, dataset, identity, std FROM ids QUALIFY row_number() OVER "
        "(PARTITION BY model_id ORDER BY std DESC, dataset, identity) "
        f"<= {int(per_model)}) "
        "SELECT model_id, dataset, identity, any_value(top.std) AS std, count(*) AS images, "
        f"quantile_cont(quality, [{quantiles}]) AS quantiles "
        "FROM manifest JOIN top USING (model_id, dataset, identity) "
        f"WHERE {SCORED} GROUP BY ALL "
        "ORDER BY model_id, std DESC, dataset, identity"
    ).to_pylist()


def thumbnail_rows(
    query: ManifestQuery, model_id: str, selection: str | None = None, n: int = THUMBNAILS
) -> list[dict]:
    """The `n` lowest, `n` nearest the (approximate) median and `n` highest quality ok images of
    `model_id`, each with its group; with a selection, the reason it gave each image."""
    where = f"{SCORED} AND model_id = {sql_literal(model_id)}"
    columns = "dataset, image_id, shard, identity, quality, model_id"
    order = "dataset, image_id"
    groups = (
        f"(SELECT 'lowest' AS grp, {columns} FROM manifest WHERE {where} "
        f"ORDER BY quality, {order} LIMIT {n}) UNION ALL "
        f"(SELECT 'median' AS grp, {columns} FROM manifest, "
        f"(SELECT approx_quantile(quality, 0.5) AS middle FROM manifest WHERE {where}) "
        f"WHERE {where} ORDER BY abs(quality - middle), {order} LIMIT {n}) UNION ALL "
        f"(SELECT 'highest' AS grp, {columns} FROM manifest WHERE {where} "
        f"ORDER BY quality DESC, {order} LIMIT {n})"
    )
    rows = query.sql(groups).to_pylist()
    reasons: dict[tuple[str, str], str] = {}
    if selection is not None and rows:
        # The selection is asked for these rows alone: a join would hash all of it.
        image_ids = ", ".join(sorted({sql_literal(r["image_id"]) for r in rows}))
        found = query.sql(
            f"SELECT dataset, image_id, reason FROM {identifier(selection)} "
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
        f"quality FROM {identifier(selection)}",
    )
    return found.get("selection")
