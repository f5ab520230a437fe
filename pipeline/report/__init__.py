"""A static, offline HTML report over one snapshot of a quality manifest.

`report_manifest` opens the snapshot (and a selection) for the report's queries and finds
where the example images are; `write_report` asks them for aggregates in SQL (`queries`),
draws them (`charts`, PNG), fetches a few example images from storage (`thumbnails`, JPEG)
and writes `index.html` beside them (`page`). Nothing on the page is fetched from the
network. The EDC curves of an evaluation are read in its result schema
(`pipeline.evaluation.results`).
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from pyiceberg.catalog import Catalog

from pipeline.errors import FiqaError
from pipeline.evaluation.results import EdcResult
from pipeline.manifest import dataset_sources
from pipeline.query import ManifestQuery, open_query
from pipeline.report import charts, queries
from pipeline.report.page import Page, SelectionView, render
from pipeline.report.thumbnails import FOLDER, thumbnails
from pipeline.storage import StorageOptions, filesystem, parse_uri

INDEX = "index.html"
# What DuckDB may hold for the report's queries before it spills: the per-identity aggregates
# grow with the manifest, the report's memory must not.
MEMORY_LIMIT = "256MB"


class ReportError(FiqaError, ValueError):
    """A report that cannot be made as asked (e.g. a model the manifest does not hold)."""


@dataclass(frozen=True)
class ReportSummary:
    index: str  # URI of index.html
    snapshot_id: int  # the manifest snapshot reported on
    model_id: str | None  # whose example images are shown
    thumbnails: int
    thumbnails_missing: int


def report_manifest(
    catalog: Catalog,
    table: str,
    out: str,
    *,
    selection: tuple[str, dict] | None = None,
    snapshot_id: int | None = None,
    edc: EdcResult | None = None,
    model_id: str | None = None,
    storage: StorageOptions | None = None,
    progress: Callable[[str], None] = print,
) -> ReportSummary:
    """Write the report of manifest `table` (its current snapshot unless `snapshot_id`) into
    `out`; `selection`, `edc` and `model_id` as `write_report` takes them."""
    with open_query(
        catalog,
        table,
        selections=[selection[0]] if selection else [],
        snapshot_id=snapshot_id,
        storage=storage,
        memory_limit=MEMORY_LIMIT,
    ) as query:
        # Where the images are: the manifest's newest record of each dataset, else the
        # selection's.
        sources = {**(selection[1].get("sources", {}) if selection else {})}
        sources.update(dataset_sources(catalog.load_table(table)))
        return write_report(
            query,
            out,
            sources=sources,
            selection=selection,
            edc=edc,
            model_id=model_id,
            storage=storage,
            progress=progress,
        )


def write_report(
    query: ManifestQuery,
    out: str,
    *,
    sources: dict[str, dict],
    selection: tuple[str, dict] | None = None,
    edc: EdcResult | None = None,
    model_id: str | None = None,
    storage: StorageOptions | None = None,
    progress: Callable[[str], None] = print,
) -> ReportSummary:
    """Write the report into `out` (a directory URI); `query` opened with MEMORY_LIMIT.

    `sources`: dataset -> {"data", "format", "format_options"} for the thumbnails;
    `selection`: (full table name, its info), exposed in `query` by its bare name;
    `model_id`: whose example images to show (default: the selection's, else the newest)."""
    fs, root = filesystem(out, storage)
    fs.makedirs(posixpath.join(root, FOLDER), exist_ok=True)
    figures: dict[str, str] = {}  # section -> chart file

    def write(name: str, data: bytes) -> None:
        fs.pipe_file(posixpath.join(root, name), data)

    def draw(name: str, png: bytes | None) -> None:
        if png is not None:
            write(f"{name}.png", png)
            figures[name] = f"{name}.png"

    progress("summarising the manifest")
    overview = queries.overview(query)
    chosen = _example_model(overview, model_id, selection)
    statuses = queries.statuses(query)
    draw("statuses", charts.status_chart(statuses))
    histograms = queries.quality_histograms(query)
    if histograms:
        draw("quality", charts.quality_chart(histograms))
    progress("measuring the spread of quality per identity")
    spreads = queries.identity_spread(query)
    most_spread = queries.most_spread(query, spreads)
    if spreads:
        draw("spread", charts.spread_chart(spreads, most_spread))

    bare = selection[0].rpartition(".")[2] if selection else None
    view = None
    if selection is not None:
        progress(f"comparing selection {selection[0]}")
        view = SelectionView(selection[0], selection[1])
        if (hist := queries.selection_histogram(query, bare)) is not None:
            draw("selection", charts.selection_chart(hist))
    if edc is not None:
        draw("edc", charts.edc_chart(edc))

    thumbs = []
    if chosen is not None:
        progress(f"fetching example images of model {chosen}")
        rows = queries.thumbnail_rows(query, chosen, bare)
        thumbs = thumbnails(rows, sources, storage, write)
    page = Page(
        table=query.table,
        snapshot_id=query.snapshot_id,
        generated_at=datetime.datetime.now(datetime.UTC),
        overview=overview,
        statuses=statuses,
        charts=figures,
        most_spread=most_spread,
        thumbnail_model=chosen,
        thumbnails=thumbs,
        selection=view,
        edc=edc,
    )
    write(INDEX, render(page).encode())
    return ReportSummary(
        index=parse_uri(out).join(INDEX).uri,
        snapshot_id=query.snapshot_id,
        model_id=chosen,
        thumbnails=len(thumbs),
        thumbnails_missing=sum(t.file is None for t in thumbs),
    )


def _example_model(
    overview: list[dict], model_id: str | None, selection: tuple[str, dict] | None
) -> str | None:
    scored: dict[str, datetime.datetime] = {}
    for row in overview:
        if row["ok"]:
            last = scored.get(row["model_id"])
            scored[row["model_id"]] = max(last, row["last_scored"]) if last else row["last_scored"]
    if model_id is not None:
        if model_id not in scored:
            raise ReportError(f"the manifest has no scored images of model {model_id!r}")
        return model_id
    if selection is not None and selection[1].get("model_id") in scored:
        return selection[1]["model_id"]
    # the newest model, as `fiqa filter` chooses by default
    return max(scored, key=lambda m: (scored[m], m)) if scored else None
