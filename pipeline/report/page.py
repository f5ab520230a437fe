"""The report as one self-contained HTML page: inline CSS, no script, images by relative path.

Every value that comes from the data (names, identities, messages, policies) is escaped.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.evaluation.results import EdcResult
from pipeline.report.queries import THUMBNAILS
from pipeline.report.thumbnails import SIZE, Thumbnail

GROUPS = {
    "lowest": "Lowest quality",
    "median": "Around the median",
    "highest": "Highest quality",
}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 24px 48px; color: #1d1d1f; }
h1 { margin: 24px 0 8px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.facts dt { color: #666; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left;
         vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
#statuses td:last-child { max-width: 560px; overflow-wrap: anywhere; color: #555; }
img.chart { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr));
          gap: 10px; }
figure { margin: 0; font-size: 11px; overflow-wrap: anywhere; }
figure img, figure .missing { width: SIZEpx; height: SIZEpx; display: block; }
figure .missing { background: #eee; color: #888; display: flex; align-items: center;
                  justify-content: center; text-align: center; }
figure .dropped { color: #b00; }
p.note { color: #666; }
""".replace("SIZE", str(SIZE))


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime.datetime):
        return e(value.isoformat(timespec="seconds"))
    return e(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def numeric(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    kinds = [all(numeric(r[i]) or r[i] is None for r in rows) for i in range(len(headers))]
    head = "".join(
        f'<th class="n">{e(h)}</th>' if n else f"<th>{e(h)}</th>"
        for h, n in zip(headers, kinds, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{cell(v)}</td>' if n else f"<td>{cell(v)}</td>"
            for v, n in zip(row, kinds, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def chart(path: str | None, alt: str) -> str:
    if path is None:
        return ""
    return f'<img class="chart" src="{e(path)}" alt="{e(alt)}">'


@dataclass(frozen=True)
class SelectionView:
    name: str
    info: dict  # written by `fiqa filter`: manifest, model_id, policy, summary, sources


@dataclass(frozen=True)
class Page:
    table: str
    snapshot_id: int | None
    generated_at: datetime.datetime
    overview: list[dict]
    statuses: list[dict]
    charts: dict[str, str]  # section -> image path inside the report
    most_spread: list[dict] = field(default_factory=list)
    thumbnail_model: str | None = None
    thumbnails: list[Thumbnail] = field(default_factory=list)
    selection: SelectionView | None = None
    edc: EdcResult | None = None


def render(page: Page) -> str:
    sections = [
        _header(page),
        _overview(page),
        _quality(page),
        _statuses(page),
        _spread(page),
        _examples(page),
        _selection(page),
        _edc(page),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Quality report: {e(page.table)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def _header(page: Page) -> str:
    images = sum(r["images"] for r in page.overview)
    ok = sum(r["ok"] for r in page.overview)
    models: dict[str, int] = {}
    for row in page.overview:
        models[row["model_id"]] = models.get(row["model_id"], 0) + row["images"]
    datasets = sorted({r["dataset"] for r in page.overview})
    facts = [
        ("Table", e(page.table)),
        ("Snapshot", e(page.snapshot_id) if page.snapshot_id is not None else "none (empty)"),
        ("Models", ", ".join(f"{e(m)} ({n:,} images)" for m, n in models.items()) or "–"),
        ("Datasets", e(", ".join(datasets)) or "–"),
        ("Images", f"{images:,} ({ok:,} ok, {images - ok:,} not ok)"),
        ("Generated", e(page.generated_at.isoformat(timespec="seconds"))),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return f"<header><h1>Quality report</h1><dl class='facts'>{items}</dl></header>"


def _overview(page: Page) -> str:
    rows = [
        (
            r["dataset"],
            r["model_id"],
            r["images"],
            r["ok"],
            r["identities"],
            r["q_min"],
            r["q_median"],
            r["q_max"],
            r["last_scored"],
        )
        for r in page.overview
    ]
    headers = (
        "dataset",
        "model_id",
        "images",
        "ok",
        "identities (approx.)",
        "min quality",
        "median (approx.)",
        "max quality",
        "last scored",
    )
    body = table(headers, rows) if rows else "<p class='note'>The manifest has no rows.</p>"
    return f"<section id='overview'><h2>Overview</h2>{body}</section>"


def _quality(page: Page) -> str:
    if "quality" not in page.charts:
        return ""
    return (
        "<section id='quality'><h2>Quality distribution</h2><p class='note'>ok images, one "
        "panel per model, each dataset as its share of images per bin.</p>"
        f"{chart(page.charts['quality'], 'quality histograms per model and dataset')}</section>"
    )


def _statuses(page: Page) -> str:
    rows = [
        (r["dataset"], r["model_id"], r["status"], r["images"], r["example"]) for r in page.statuses
    ]
    body = table(("dataset", "model_id", "status", "images", "example message"), rows)
    return (
        "<section id='statuses'><h2>Errors by status</h2>"
        f"{chart(page.charts.get('statuses'), 'images that are not ok, by status')}"
        f"{body if rows else ''}</section>"
    )


def _spread(page: Page) -> str:
    if "spread" not in page.charts:
        return ""
    rows = [
        (r["model_id"], r["dataset"], r["identity"], r["images"], r["std"], *r["quantiles"])
        for r in page.most_spread
    ]
    headers = ("model_id", "dataset", "identity", "images", "std", "p5", "p25", "p50", "p75", "p95")
    return (
        "<section id='spread'><h2>Identity spread</h2><p class='note'>Identities with at least "
        "two ok images, by the mean and standard deviation of their quality; right: the "
        "identities with the largest deviation (boxes: quartiles, whiskers: 5th and 95th "
        "percentiles).</p>"
        f"{chart(page.charts['spread'], 'per-identity quality spread')}"
        f"<h3>Largest spread</h3>{table(headers, rows)}</section>"
    )


def _examples(page: Page) -> str:
    if not page.thumbnails:
        return ""
    missing = sum(t.file is None for t in page.thumbnails)
    parts = [
        "<section id='examples'><h2>Example images</h2>",
        f"<p class='note'>The {THUMBNAILS} lowest, {THUMBNAILS} nearest the median and "
        f"{THUMBNAILS} highest quality ok images of model {e(page.thumbnail_model)}.",
        f" {missing} of {len(page.thumbnails)} could not be fetched.</p>" if missing else "</p>",
    ]
    for group, title in GROUPS.items():
        figures = [_figure(t) for t in page.thumbnails if t.row["grp"] == group]
        parts.append(f"<h3>{title}</h3><div class='thumbs'>{''.join(figures)}</div>")
    parts.append("</section>")
    return "".join(parts)


def _figure(thumb: Thumbnail) -> str:
    row = thumb.row
    label = f"{row['dataset']}: {row['image_id']}"
    if thumb.file is None:
        picture = "<div class='missing'>not available</div>"
    else:
        picture = f'<img src="{e(thumb.file)}" alt="{e(label)}" width="{SIZE}" height="{SIZE}">'
    reason = row.get("reason")
    verdict = ""
    if reason is not None:
        kind = "kept" if reason == "kept" else "dropped"
        verdict = f"<br><span class='{kind}'>{e(reason)}</span>"
    return (
        f"<figure>{picture}<figcaption>quality {cell(row['quality'])}<br>"
        f"identity {cell(row['identity'])}<br>{e(label)}{verdict}</figcaption></figure>"
    )


def _selection(page: Page) -> str:
    view = page.selection
    if view is None:
        return ""
    info = view.info
    facts = [
        ("Selection", e(view.name)),
        ("Of", f"{e(info.get('manifest'))}, snapshot {e(info.get('manifest_snapshot'))}"),
        ("Model", cell(info.get("model_id"))),
        ("Policy", f"<code>{e(json.dumps(info.get('policy', {}), sort_keys=True))}</code>"),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    summary = view.info["summary"]
    by_reason = sorted(summary["by_reason"].items(), key=lambda r: (-r[1], r[0]))
    reasons = table(("reason", "kept", "images"), [(r, r == "kept", n) for r, n in by_reason])
    identities = table(
        (
            "dataset",
            "identities",
            "identities kept",
            "identities dropped",
            "images",
            "images kept",
            "images dropped",
        ),
        [
            (
                dataset,
                d["identities"],
                d["identities_kept"],
                d["identities_dropped"],
                d["images"],
                d["kept"],
                d["dropped"],
            )
            for dataset, d in sorted(summary["datasets"].items())
        ],
    )
    return (
        "<section id='selection'><h2>Selection</h2>"
        f"<dl class='facts'>{items}</dl><h3>Images by reason</h3>{reasons}"
        f"<h3>Identities and images per dataset</h3>{identities}"
        f"{chart(page.charts.get('selection'), 'quality before and after the selection')}"
        "</section>"
    )


def _edc(page: Page) -> str:
    if page.edc is None:
        return ""
    rows = [
        (c.fr_model, c.fmr, c.method, c.pauc, c.pauc_discard_limit, len(c.discard))
        for c in page.edc.curves
    ]
    headers = ("FR model", "FMR", "method", "pAUC", "pAUC discard limit", "points")
    return (
        "<section id='edc'><h2>Error versus discard (EDC)</h2><p class='note'>FNMR at a fixed "
        "FMR as the lowest-quality images are discarded; lower is better. The dotted line "
        "marks the pAUC discard limit.</p>"
        f"{chart(page.charts['edc'], 'EDC curves')}{table(headers, rows)}</section>"
    )
