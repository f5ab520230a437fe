import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasource import fetch_images
from pipeline.evaluation.results import EdcError, load_edc
from pipeline.formats import get_format
from pipeline.formats.wds import WdsFormat
from pipeline.manifest import dataset_source, dataset_sources, open_table
from pipeline.policy import FilterPolicy, apply_policy
from pipeline.query import open_query
from pipeline.report import ReportError, queries, write_report
from pipeline.report.charts import edc_chart
from pipeline.report.page import GROUPS
from pipeline.selection import selection_info, write_selection
from pipeline.storage import filesystem, parse_uri
from tests.builders import write_faces
from tests.manifests import manifest_rows, sqlite_catalog, write_manifest

TABLE = "faces.quality"
SELECTION = "faces.clean"
HEADINGS = (
    "Quality report",
    "Overview",
    "Quality distribution",
    "Errors by status",
    "Identity spread",
    "Example images",
)


def edc_result() -> dict:
    discard = [i / 20 for i in range(11)]
    curves = []
    for fr_model in ("toy-fr-model-a", "toy-fr-model-b"):  # made-up curves
        for method, slope in (("toy-method", 0.6), ("random", 0.0)):
            fnmr = [0.08 * (1 - slope * d) for d in discard]
            curves.append(
                {
                    "method": method,
                    "fr_model": fr_model,
                    "fmr": 1e-3,
                    "discard": discard,
                    "fnmr": fnmr,
                    "pauc": float(np.trapezoid(fnmr[:7], discard[:7])),  # up to 0.3
                    "pauc_discard_limit": 0.3,
                    "notes": "extra keys are ignored",
                }
            )
    return {"curves": curves, "protocol": "ignored too"}


def scored_faces(root: Path, catalog=None, identities: int = 6, per_identity: int = 8) -> dict:
    """A wds dataset on disk and manifest rows for it written directly (no model, no Ray):
    model m1 scores every image, m2 (newer) the first two shards. Identities' mean quality
    rises with their number, their deviations vary."""
    catalog = catalog or sqlite_catalog(root)
    data = str(root / "faces")
    expected = write_faces(
        "wds",
        data,
        identities=identities,
        per_identity=per_identity,
        corrupt_every=9,
        shard_size=12,
    )
    fs, path = filesystem(data)
    fmt = get_format("wds")
    shards = fmt.list_shards(fs, path)
    samples = [s for shard in shards for s in fmt.read_shard(fs, path, shard)]
    source = dataset_source(data, "wds", {})
    properties = {"fiqa.dataset": "faces", "fiqa.source": json.dumps(source)}
    rng = np.random.default_rng(0)
    for model_id, minutes, subset in (("m1", 0, samples), ("m2", 5, samples[:24])):
        rows = []
        for sample in subset:
            status = expected[sample["image_id"]]
            i = int(sample["identity"][2:])
            mean = 0.2 + 0.6 * i / max(identities - 1, 1)
            deviation = 0.02 + 0.12 * (i * 7 % identities) / identities
            quality = mean + rng.normal(0, deviation) if status == "ok" else None
            rows.append(
                {
                    "dataset": "faces",
                    "image_id": sample["image_id"],
                    "shard": sample["shard"],
                    "identity": sample["identity"],
                    "status": status,
                    "error": None if status == "ok" else f"{status}: broken <sample>",
                    "quality": quality,
                }
            )
        write_manifest(
            catalog, TABLE, manifest_rows(rows, model_id, minutes), properties=properties
        )
    return {"catalog": catalog, "data": data, "sources": {"faces": source}}


def select(catalog, **rules) -> tuple[str, dict]:
    """What `fiqa filter --out clean` stores, by the real policy code."""
    with open_query(catalog, TABLE, selections=()) as query:
        rows, model_id = apply_policy(query, FilterPolicy(**rules))
        snapshot = query.snapshot_id
    info = {
        "manifest": TABLE,
        "manifest_snapshot": snapshot,
        "model_id": model_id,
        "policy": rules,
        "sources": dataset_sources(catalog.load_table(TABLE)),
    }
    write_selection(catalog, SELECTION, rows, info)
    return SELECTION, selection_info(catalog, SELECTION)


def build_report(root: Path, out: Path, *, with_selection=True, with_edc=True, **kwargs):
    """A report of `scored_faces` (with a selection and an EDC result); returns its summary."""
    faces = scored_faces(root, **kwargs)
    catalog = faces["catalog"]
    selection = (
        select(catalog, model_id="m1", min_quality=0.3, min_images_per_identity=3)
        if with_selection
        else None
    )
    edc = None
    if with_edc:
        (root / "eval.json").write_text(json.dumps(edc_result()))
        edc = load_edc(str(root / "eval.json"))
    selections = [selection[0]] if selection else []
    with open_query(catalog, TABLE, selections=selections) as query:
        return write_report(
            query,
            str(out),
            sources=faces["sources"],
            selection=selection,
            edc=edc,
            progress=lambda _: None,
        )


def referenced_files(page: str) -> list[str]:
    return re.findall(r'src="([^"]+)"', page)


def test_report_of_a_manifest_with_selection_and_edc(tmp_path):
    out = tmp_path / "report"
    summary = build_report(tmp_path, out)
    page = (out / "index.html").read_text()
    for heading in (*HEADINGS, "Selection", "Error versus discard (EDC)"):
        assert f">{heading}</h" in page
    assert summary.index == str(out / "index.html")
    assert summary.model_id == "m1"  # the selection's model, though m2 is newer
    assert summary.thumbnails == 72 and summary.thumbnails_missing == 0
    files = referenced_files(page)
    assert {"quality.png", "statuses.png", "spread.png", "selection.png", "edc.png"} <= set(files)
    assert len([f for f in files if f.startswith("thumbs/")]) == 72
    for name in files:
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")
    assert "not available" not in page
    assert "min_images_per_identity" in page and "&lt;sample&gt;" in page


def test_aggregates_agree_with_the_rows(tmp_path):
    catalog = scored_faces(tmp_path)["catalog"]
    rows = open_table(catalog, TABLE).scan().to_arrow().to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    with open_query(catalog, TABLE, selections=()) as query:
        overview = queries.overview(query)
        assert {(r["model_id"], r["images"], r["ok"]) for r in overview} == {
            (m, sum(r["model_id"] == m for r in rows), sum(r["model_id"] == m for r in ok))
            for m in ("m1", "m2")
        }
        errors = {(r["model_id"], r["status"]): r["images"] for r in queries.statuses(query)}
        assert errors[("m1", "decode_error")] == sum(
            r["status"] == "decode_error" and r["model_id"] == "m1" for r in rows
        )

        hists = queries.quality_histograms(query)
        for model_id, hist in hists.items():
            qualities = [r["quality"] for r in ok if r["model_id"] == model_id]
            assert hist.counts["faces"].sum() == len(qualities)
            assert hist.edges[0] == pytest.approx(min(qualities), abs=1e-6)
            assert hist.edges[-1] == pytest.approx(max(qualities), abs=1e-6)
            expected, _ = np.histogram(qualities, bins=hist.edges)
            assert (hist.counts["faces"] == expected).all()

        by_identity: dict[str, list[float]] = {}
        for r in ok:
            if r["model_id"] == "m1":
                by_identity.setdefault(r["identity"], []).append(r["quality"])
        spreads = queries.identity_spread(query)
        assert spreads["m1"].identities == sum(len(q) >= 2 for q in by_identity.values())
        top = [r for r in queries.most_spread(query, spreads) if r["model_id"] == "m1"]
        stds = {i: np.std(q, ddof=1) for i, q in by_identity.items() if len(q) >= 2}
        assert [r["identity"] for r in top] == sorted(stds, key=lambda i: (-stds[i], i))[
            : queries.MOST_SPREAD
        ]
        assert top[0]["quantiles"][2] == pytest.approx(np.median(by_identity[top[0]["identity"]]))

        shown = queries.thumbnail_rows(query, "m1", n=5)
        qualities = sorted(r["quality"] for r in ok if r["model_id"] == "m1")
        groups = {g: [r["quality"] for r in shown if r["grp"] == g] for g in GROUPS}
        assert groups["lowest"] == pytest.approx(qualities[:5])
        assert groups["highest"] == pytest.approx(qualities[-5:])
        assert len(groups["median"]) == 5
        assert min(groups["median"]) <= np.median(qualities) <= max(groups["median"])


def test_selection_histogram_matches_its_summary(tmp_path):
    catalog = scored_faces(tmp_path)["catalog"]
    name, info = select(catalog, model_id="m1", min_quality=0.3, min_images_per_identity=3)
    with open_query(catalog, TABLE, selections=[name]) as query:
        hist = queries.selection_histogram(query, "clean")
    summary = info["summary"]
    assert hist.counts["kept"].sum() == summary["kept"]
    assert hist.counts["dropped"].sum() == summary["dropped"] - summary["by_reason"]["status"]


def test_data_text_is_escaped_and_unfetchable_images_are_placeholders(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    evil = '"><script>alert(1)</script>'
    rows = [
        {
            "dataset": "<b>d&d</b>",
            "image_id": f"{evil}{i}",
            "identity": "a$b$_{x}" if i % 2 else evil,  # mathtext would choke on '$'
            "quality": float(i),
            "status": "ok",
        }
        for i in range(6)
    ]
    rows.append(
        {
            "dataset": "<b>d&d</b>",
            "image_id": "x",
            "status": "read_error",
            "error": "<img src=x onerror=alert(2)>",
        }
    )
    write_manifest(catalog, TABLE, manifest_rows(rows, model_id="<m>"))
    out = tmp_path / "report"
    with open_query(catalog, TABLE, selections=()) as query:
        summary = write_report(query, str(out), sources={}, progress=lambda _: None)
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "<b>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;d&amp;d&lt;/b&gt;" in page
    assert summary.thumbnails == 18 and summary.thumbnails_missing == 18  # no source known
    assert page.count("not available") == 18
    assert all(not f.startswith("thumbs/") for f in referenced_files(page))


def test_a_missing_shard_costs_only_its_thumbnails(tmp_path):
    faces = scored_faces(tmp_path)
    gone = sorted(Path(faces["data"]).glob("*.tar"))[0]
    gone.unlink()
    out = tmp_path / "report"
    with open_query(faces["catalog"], TABLE, selections=()) as query:
        summary = write_report(
            query, str(out), sources=faces["sources"], model_id="m1", progress=lambda _: None
        )
        shown = queries.thumbnail_rows(query, "m1")
    lost = sum(r["shard"] == gone.name for r in shown)
    assert 0 < lost < len(shown)
    assert summary.thumbnails_missing == lost
    assert (out / "index.html").read_text().count("not available") == lost


def test_fetch_images_reads_only_the_shards_it_needs(tmp_path, monkeypatch):
    data = str(tmp_path / "wds")
    expected = write_faces("wds", data, identities=4, per_identity=10, shard_size=10)
    read = []
    original = WdsFormat.read_shard

    def recording(self, fs, root, shard):
        read.append(shard.key)
        yield from original(self, fs, root, shard)

    monkeypatch.setattr(WdsFormat, "read_shard", recording)
    wanted = sorted(expected)[12:14]  # both in the second shard
    shard = wanted[0].split("/")[0]
    found = fetch_images("wds", {}, data, None, {shard: [*wanted, "nope"]})
    assert read == [shard] and sorted(found) == wanted
    assert all(v[:3] == b"\xff\xd8\xff" for v in found.values())
    assert fetch_images("wds", {}, data, None, {"missing.tar": ["a"]}) == {}


def test_an_empty_manifest_still_gives_a_page(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    open_table(catalog, TABLE)
    with open_query(catalog, TABLE, selections=()) as query:
        summary = write_report(query, str(tmp_path / "r"), sources={}, progress=lambda _: None)
    page = (tmp_path / "r" / "index.html").read_text()
    assert "The manifest has no rows" in page and summary.model_id is None
    assert referenced_files(page) == []


def test_an_unknown_model_is_refused(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    write_manifest(catalog, TABLE, manifest_rows([{"image_id": "a", "quality": 0.5}]))
    with open_query(catalog, TABLE, selections=()) as query, pytest.raises(ReportError):
        write_report(query, str(tmp_path / "r"), sources={}, model_id="zz", progress=print)


def test_edc_results_are_validated_and_drawn(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(edc_result()))
    result = load_edc(str(path))
    assert len(result.curves) == 4 and len(result.panels()) == 2
    assert edc_chart(result)[:4] == b"\x89PNG"
    bad = edc_result()
    bad["curves"][1]["fnmr"] = bad["curves"][1]["fnmr"][:-1]
    path.write_text(json.dumps(bad))
    with pytest.raises(EdcError, match=r"curves\.1.*differ in length"):
        load_edc(str(path))
    path.write_text("{not json")
    with pytest.raises(EdcError, match="cannot read"):
        load_edc(str(path))
    with pytest.raises(EdcError, match="cannot read"):
        load_edc(str(tmp_path / "absent.json"))


def test_a_report_goes_to_any_storage_uri(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    rows = [{"image_id": "a", "quality": 0.5}, {"image_id": "b", "status": "decode_error"}]
    write_manifest(catalog, TABLE, manifest_rows(rows))
    with open_query(catalog, TABLE, selections=()) as query:
        summary = write_report(query, "memory://reports/r", sources={}, progress=lambda _: None)
    assert parse_uri(summary.index) == parse_uri("memory://reports/r/index.html")
    fs, root = filesystem("memory://reports/r")
    page = fs.cat_file(f"{root}/index.html").decode()
    assert all(fs.exists(f"{root}/{name}") for name in referenced_files(page))
    assert "statuses.png" in referenced_files(page)
