"""The report's charts as PNG bytes, drawn with matplotlib's object API (no pyplot: no global
figure state, no GUI backend)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pipeline.evaluation.results import EdcResult
from pipeline.report.queries import Histogram, Spread

COLUMNS = 3
PANEL = (4.4, 3.2)  # inches per panel
DPI = 100
# Names in the data (datasets, identities) are text, never TeX: a '$' must not start mathtext.
STYLE = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _panels(count: int, columns: int = COLUMNS, size=PANEL) -> tuple[Figure, list]:
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for extra in axes[count:]:
        extra.set_visible(False)
    return fig, axes[:count]


def quality_chart(histograms: dict[str, Histogram]) -> bytes:
    """One panel per model_id; each dataset's share of its ok images per quality bin."""
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(len(histograms))
        for ax, (model_id, hist) in zip(axes, histograms.items(), strict=True):
            for dataset, counts in hist.counts.items():
                total = counts.sum()
                ax.stairs(counts / max(total, 1), hist.edges, label=f"{dataset} ({total:,})")
            ax.set(title=f"model {model_id}", xlabel="quality", ylabel="share of images")
            ax.legend(fontsize=8)
        return _png(fig)


def status_chart(rows: Sequence[dict]) -> bytes | None:
    """Images that are not ok, per dataset and model, stacked by status; None if all are ok."""
    errors = [r for r in rows if r["status"] != "ok"]
    if not errors:
        return None
    groups = sorted({(r["dataset"], r["model_id"]) for r in errors})
    kinds = sorted({r["status"] for r in errors})
    counts = {(r["dataset"], r["model_id"], r["status"]): r["images"] for r in errors}
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 1.2 + 0.35 * len(groups)), layout="constrained")
        ax = fig.subplots()
        left = np.zeros(len(groups))
        y = np.arange(len(groups))
        for kind in kinds:
            widths = np.array([counts.get((d, m, kind), 0) for d, m in groups])
            ax.barh(y, widths, left=left, label=kind)
            left += widths
        ax.set_yticks(y, [f"{d} / {m}" for d, m in groups])
        ax.invert_yaxis()
        ax.set(xlabel="images", title="images that are not ok, by status")
        ax.legend(fontsize=8)
        return _png(fig)


def spread_chart(spreads: dict[str, Spread], most_spread: Sequence[dict]) -> bytes:
    """Per model: identities by (mean, std) of quality, and box plots (5-95% whiskers) of the
    identities with the largest std."""
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(2 * len(spreads), columns=2, size=(5.6, 3.8))
        for (model_id, spread), heat, boxes in zip(
            spreads.items(), axes[0::2], axes[1::2], strict=True
        ):
            masked = np.ma.masked_equal(spread.counts, 0)
            mesh = heat.pcolormesh(
                spread.mean_edges,
                spread.std_edges,
                masked,
                norm=LogNorm(vmin=1, vmax=max(int(spread.counts.max()), 2)),
                cmap="viridis",
            )
            bar = fig.colorbar(mesh, ax=heat, label="identities")
            # plain tick labels at 1, 2, 5, 10, ...: the log axis's own are mathtext, which
            # STYLE turns off
            bar.ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
            heat.set(
                title=f"model {model_id}: {spread.identities:,} identities",
                xlabel="mean quality of the identity",
                ylabel="std of quality",
            )
            stats = list(_box_stats(r for r in most_spread if r["model_id"] == model_id))
            if stats:
                boxes.bxp(stats, orientation="horizontal", showfliers=False)
                boxes.invert_yaxis()
            boxes.set(title="largest spread", xlabel="quality")
        return _png(fig)


def _box_stats(rows: Iterable[dict]) -> Iterator[dict]:
    for row in rows:
        low, q1, median, q3, high = row["quantiles"]
        label = f"{row['dataset']}/{row['identity']} ({row['images']})"
        yield {"label": label, "whislo": low, "q1": q1, "med": median, "q3": q3, "whishi": high}


def selection_chart(hist: Histogram) -> bytes:
    kept = hist.counts.get("kept", np.zeros(len(hist.edges) - 1, np.int64))
    before = kept + hist.counts.get("dropped", 0)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 3.4), layout="constrained")
        ax = fig.subplots()
        ax.stairs(before, hist.edges, label=f"before ({before.sum():,})", color="0.45")
        ax.stairs(kept, hist.edges, label=f"kept ({kept.sum():,})", fill=True, alpha=0.6)
        ax.set(title="quality before and after the selection", xlabel="quality", ylabel="images")
        ax.legend(fontsize=8)
        return _png(fig)


def edc_chart(result: EdcResult) -> bytes:
    """FNMR against the discarded fraction, one panel per (FR model, FMR), a line per method."""
    panels = result.panels()
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(len(panels))
        for ax, ((fr_model, fmr), curves) in zip(axes, panels.items(), strict=True):
            for curve in curves:
                ax.step(
                    curve.discard,
                    curve.fnmr,
                    where="post",
                    label=f"{curve.method} (pAUC {curve.pauc:.4f})",
                )
            limit = curves[0].pauc_discard_limit
            ax.axvline(limit, color="0.6", linestyle=":", linewidth=1)
            ax.set(
                title=f"{fr_model}, FMR {fmr:g}",
                xlabel="fraction of comparisons discarded",
                ylabel="FNMR",
                xlim=(0, max(max(c.discard) for c in curves)),
                ylim=(0, None),
            )
            ax.legend(fontsize=8)
        return _png(fig)
