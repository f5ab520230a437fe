"""`fiqa export`'s algorithms: every target read back against the kept source samples."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset

from pipeline import shuffle
from pipeline.catalog import CatalogConfig, open_catalog
from pipeline.export import ExportError, ExportPlan, export
from pipeline.export import kept as kept_keys
from pipeline.export.base import natural_key
from pipeline.export.samples import balanced_sizes
from pipeline.formats import get_format
from pipeline.formats import rec as rec_format
from pipeline.formats.rec import read_index
from pipeline.formats.recordio import (
    ImageHeader,
    pack_image_header,
    pack_record,
    read_record_at,
    unpack_image_header,
)
from pipeline.selection import SelectionError, load_selection, write_selection
from pipeline.storage import StorageOptions, filesystem

pytestmark = pytest.mark.timeout(120)

SELECTION = "fiqa.chosen"


def fake_jpeg(n: int) -> bytes:
    """Distinct bytes with a JPEG signature (nothing here decodes them)."""
    return b"\xff\xd8\xff\xe0" + f"face-{n}-".encode() * (1 + n % 4)


def write_dataset(
    fmt: str, uri: str, identities: int, per_identity: int, shard_size: int = 5
) -> list[dict]:
    """Writes a dataset of distinct images; returns its samples as our reader gives them."""
    fs, root = filesystem(uri)
    with get_format(fmt).writer(fs, root, shard_size=shard_size) as writer:
        for i in range(identities):
            for j in range(per_identity):
                image = fake_jpeg(i * per_identity + j)
                writer.write(f"id{i:02d}_{j:02d}", f"person-{i:02d}", image, "jpg")
    return samples_of(fmt, uri)


def samples_of(fmt: str, uri: str, storage: StorageOptions | None = None, **options) -> list[dict]:
    fs, root = filesystem(uri, storage)
    reader = get_format(fmt, **options)
    return [r for s in reader.list_shards(fs, root) for r in reader.read_shard(fs, root, s)]


def select(
    sources: dict[str, tuple[str, str, list[dict]]],
    keep,
    name: str = SELECTION,
    catalog: CatalogConfig | None = None,
) -> list:
    """Writes a selection over (uri, format, samples) per dataset, `keep(dataset, n)` choosing;
    returns the kept (dataset, sample) pairs."""
    rows, kept = [], []
    for dataset, (_, _, samples) in sources.items():
        for n, s in enumerate(samples):
            chosen = keep(dataset, n)
            rows.append(
                {
                    "dataset": dataset,
                    "image_id": s["image_id"],
                    "shard": s["shard"],
                    "identity": s["identity"],
                    "status": "ok",
                    "quality": 0.5,
                    "model_id": "m0",
                    "keep": chosen,
                    "reason": "kept" if chosen else "quality",
                }
            )
            if chosen:
                kept.append((dataset, s))
    info = {
        "manifest": "fiqa.manifest",
        "model_id": "m0",
        "sources": {
            d: {"data": uri, "format": fmt, "format_options": {}}
            for d, (uri, fmt, _) in sources.items()
        },
    }
    write_selection(open_catalog(catalog), name, pa.Table.from_pylist(rows), info)
    return kept


def run(target: str, out: str, **fields):
    return export(ExportPlan(selection=SELECTION, target=target, out=out, **fields), lambda _: None)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))


@pytest.fixture
def groups(request, monkeypatch):
    """ "one": the kept keys in one group, sorted here; "many": groups of 3 keys, sent to Ray
    tasks through scratch files by map tasks of 10 selection rows."""
    if request.param == "many":
        monkeypatch.setattr(kept_keys, "ROWS_PER_GROUP", 3)
        monkeypatch.setattr(shuffle, "ROWS_PER_MAP", 10)
    return request.param


@pytest.fixture
def rec(tmp_path):
    uri = str(tmp_path / "rec")
    return uri, write_dataset("rec", uri, identities=4, per_identity=5)


def triples(pairs) -> list[tuple]:
    return [(d, s["image_id"], s["identity"], s["image"]) for d, s in pairs]


# --- rec-idx ----------------------------------------------------------------------------------


def local_index(path: str) -> dict[int, int]:
    return read_index(fsspec.filesystem("file"), path)


def lst_of(path: str) -> list[tuple[int, str, int]]:
    with open(path) as f:
        return [(int(k), image_id, int(c)) for k, image_id, c in (ln.split("\t") for ln in f)]


@pytest.mark.parametrize("via", ["rec_file", "symlink"])
@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_rec_idx_reads_back_as_exactly_the_kept_set(ray_local, tmp_path, rec, via, groups):
    uri, samples = rec
    keep = {1, 2, 3, 7, 8, 12, 19}  # samples 0..19 are records 1..20; record 0 is the header
    kept = select({"faces": (uri, "rec", samples)}, lambda _, n: n in keep)
    out = str(tmp_path / "export")
    summary = run("rec-idx", out)
    assert summary.images == len(kept) == 7 and summary.problems == []

    options = {"rec_file": f"{uri}/train.rec"} if via == "rec_file" else {}
    if via == "rec_file":
        os.remove(f"{out}/train.rec")
    else:
        assert os.readlink(f"{out}/train.rec") == f"{uri}/train.rec"
    back = samples_of("rec", out, **options)
    lst = lst_of(f"{out}/train.lst")
    assert [k for k, _, _ in lst] == list(range(7))
    original = {f"train.rec#{k}": image_id for k, image_id, _ in lst}
    assert [(original[r["image_id"]], r["identity"], r["image"]) for r in back] == [
        (s["image_id"], s["identity"], s["image"]) for _, s in kept
    ]
    assert {r["status"] for r in back} == {"ok"}

    assert local_index(f"{out}/train.idx").keys() == set(range(7))
    for name in ("property", "identities.tsv"):
        assert Path(out, name).read_bytes() == Path(uri, name).read_bytes()
    record = json.loads(Path(out, "_export.json").read_text())
    assert record["format_options"] == {"rec_file": f"{uri}/train.rec"}
    assert record["images"] == 7 and record["selection"] == SELECTION
    assert record["sources"]["faces"]["data"] == uri


def test_insightface_loader_takes_exactly_the_kept_records(tmp_path, rec):
    """MXFaceDataset's logic, by hand: record 0's flag decides which keys are images."""
    uri, samples = rec
    kept = select({"faces": (uri, "rec", samples)}, lambda _, n: n % 3 == 1)
    out = str(tmp_path / "export")
    run("rec-idx", out)
    index = local_index(f"{out}/train.idx")
    with open(f"{out}/train.rec", "rb") as f:
        first, _ = unpack_image_header(read_record_at(f, index[0])[0])
        assert not isinstance(first.label, tuple)  # flag 0: every key of the .idx is an image
        labels = [unpack_image_header(read_record_at(f, index[k])[0])[0].label for k in index]
    classes = [c for _, _, c in lst_of(f"{out}/train.lst")]
    assert sorted(index) == list(range(len(kept))) and labels == classes
    assert Path(out, "property").read_text() == "4,112,112\n"


def hand_made_rec(root: str, flags: dict[int, int]) -> None:
    """An im2rec-style .rec without header: keys 0..4, key k with `flags[k]` labels."""
    blob, lines = b"", []
    for key in range(5):
        count = flags.get(key, 0)
        label = tuple(float(key) for _ in range(count)) if count else float(key)
        lines.append(f"{key}\t{len(blob)}\n")
        blob += pack_record(pack_image_header(ImageHeader(label, key)) + fake_jpeg(key))
    os.makedirs(root)
    with open(f"{root}/train.rec", "wb") as f:
        f.write(blob)
    with open(f"{root}/train.idx", "w") as f:
        f.writelines(lines)


def test_rec_idx_refuses_a_first_record_with_header_flag(tmp_path):
    uri = str(tmp_path / "rec")
    hand_made_rec(uri, flags={1: 2})
    samples = samples_of("rec", uri)
    select({"faces": (uri, "rec", samples)}, lambda _, n: n >= 1)
    with pytest.raises(ExportError, match="record 1, the first kept, has header flag 2"):
        run("rec-idx", str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused")
    # The same record further down is an ordinary image to the flag-0 branch.
    select({"faces": (uri, "rec", samples)}, lambda *_: True)
    summary = run("rec-idx", str(tmp_path / "fine"))
    assert summary.images == 5


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_rec_idx_reports_kept_images_the_index_lacks(ray_local, tmp_path, rec, groups):
    uri, samples = rec
    select({"faces": (uri, "rec", samples)}, lambda _, n: n < 6)
    lines = Path(uri, "train.idx").read_text().splitlines()
    with open(f"{uri}/train.idx", "w") as f:  # drop record 4 from the source index
        f.writelines(ln + "\n" for ln in lines if not ln.startswith("4\t"))
    summary = run("rec-idx", str(tmp_path / "export"))
    assert summary.images == 5
    assert [(p["image_id"], p["problem"]) for p in summary.problems] == [("train.rec#4", "missing")]
    record = json.loads((tmp_path / "export" / "_export.json").read_text())
    assert record["problem_counts"] == {"missing": 1}


def test_rec_idx_reads_an_unsorted_index_in_blocks(ray_local, tmp_path, rec, monkeypatch):
    # Blocks of about two lines, the lines shuffled and one key listed twice (the last
    # listing wins, as in mxnet): every group still finds exactly its records.
    uri, samples = rec
    monkeypatch.setattr(rec_format, "INDEX_BLOCK_BYTES", 16)
    monkeypatch.setattr(kept_keys, "ROWS_PER_GROUP", 3)
    lines = Path(uri, "train.idx").read_text().splitlines()
    offsets = dict(ln.split("\t") for ln in lines)
    shuffled = lines[::2][::-1] + lines[1::2] + [f"5\t{offsets['5']}"]
    Path(uri, "train.idx").write_text(
        "".join(f"{ln}\n" for ln in [f"5\t{offsets['9']}", *shuffled])
    )
    kept = select({"faces": (uri, "rec", samples)}, lambda _, n: n % 4 != 2)
    out = str(tmp_path / "export")
    summary = run("rec-idx", out)
    assert summary.images == len(kept) and summary.problems == []
    back = samples_of("rec", out)
    original = {f"train.rec#{k}": image_id for k, image_id, _ in lst_of(f"{out}/train.lst")}
    assert [(original[r["image_id"]], r["image"]) for r in back] == [
        (s["image_id"], s["image"]) for _, s in kept
    ]


def test_rec_idx_needs_one_rec_dataset(tmp_path, rec):
    uri, samples = rec
    wds_uri = str(tmp_path / "wds")
    wds_samples = write_dataset("wds", wds_uri, identities=2, per_identity=2)
    select({"a": (uri, "rec", samples), "b": (wds_uri, "wds", wds_samples)}, lambda *_: True)
    with pytest.raises(ExportError, match="choose the dataset with --dataset"):
        run("rec-idx", str(tmp_path / "x"))
    with pytest.raises(ExportError, match="b is wds"):
        run("rec-idx", str(tmp_path / "x"), dataset="b")
    with pytest.raises(ExportError, match="has no dataset 'c'"):
        run("rec-idx", str(tmp_path / "x"), dataset="c")
    assert run("rec-idx", str(tmp_path / "x"), dataset="a").images == len(samples)
    with pytest.raises(ExportError, match="is not empty"):
        run("rec-idx", str(tmp_path / "x"), dataset="a")


# --- wds --------------------------------------------------------------------------------------


def test_balanced_sizes():
    assert balanced_sizes(0, 4) == []
    assert balanced_sizes(8, 4) == [4, 4]
    assert balanced_sizes(9, 4) == [3, 3, 3]
    assert balanced_sizes(10, 4) == [4, 3, 3]
    for total in range(1, 60):
        sizes = balanced_sizes(total, 7)
        assert sum(sizes) == total and max(sizes) - min(sizes) <= 1 and max(sizes) <= 7
        assert len(sizes) == -(-total // 7)


def test_natural_order():
    ids = ["train.rec#10", "train.rec#9", "train.rec#100", "a/b1", "a/b01"]
    assert sorted(ids, key=natural_key) == [
        "a/b01",
        "a/b1",
        "train.rec#9",
        "train.rec#10",
        "train.rec#100",
    ]


@pytest.fixture
def two_sources(tmp_path, rec):
    wds_uri = str(tmp_path / "wds")
    return {
        "faces-rec": (*rec[:1], "rec", rec[1]),
        "faces-wds": (wds_uri, "wds", write_dataset("wds", wds_uri, identities=3, per_identity=4)),
    }


def read_webdataset(out: str) -> list[dict]:
    shards = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
    urls = [f"{out}/{n}" for n in shards]
    return list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_wds_export_reads_back_with_webdataset(ray_local, tmp_path, two_sources):
    kept = select(two_sources, lambda d, n: n % 4 != 1 and not (d == "faces-wds" and n > 9))
    out = str(tmp_path / "export")
    summary = run("wds", out, shard_size=4)
    assert summary.images == len(kept) == 22 and summary.problems == []
    assert [s["images"] for s in summary.shards] == [4, 4, 4, 4, 3, 3]
    assert sorted(os.listdir(out)) == ["_export.json", *(f"shard-{i:06d}.tar" for i in range(6))]

    back = read_webdataset(out)
    assert [s["__key__"] for s in back] == [f"{i:09d}" for i in range(22)]
    meta = [json.loads(s["json"]) for s in back]
    # Export order: by dataset, then the source's shard and image order.
    assert [
        (m["dataset"], m["image_id"], m["identity"], s["jpg"])
        for m, s in zip(meta, back, strict=True)
    ] == triples(kept)

    ours = samples_of("wds", out)
    assert [(r["identity"], r["image"]) for r in ours] == [
        (s["identity"], s["image"]) for _, s in kept
    ]
    record = json.loads(Path(out, "_export.json").read_text())
    assert [s["name"] for s in record["shards"]] == [f"shard-{i:06d}.tar" for i in range(6)]
    assert record["images"] == 22 and record["snapshot_id"] == summary.snapshot_id
    assert record["problems"] == [] and record["kept"] == 22

    again = str(tmp_path / "again")
    run("wds", again, shard_size=4)
    for name in summary.files:  # deterministic to the byte
        assert Path(out, name).read_bytes() == Path(again, name).read_bytes()


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_missing_and_unreadable_kept_images_are_reported(ray_local, tmp_path, groups):
    uri = str(tmp_path / "wds")
    samples = write_dataset("wds", uri, identities=4, per_identity=5)  # 4 shards of 5
    ghost = {**samples[0], "image_id": "shard-000000.tar/nobody_00"}  # never was in the shard
    gone = {**samples[1], "image_id": "shard-000099.tar/x", "shard": "shard-000099.tar"}
    kept = select({"faces": (uri, "wds", [*samples, ghost, gone])}, lambda *_: True)
    cut_short = tmp_path / "wds" / "shard-000002.tar"
    data = cut_short.read_bytes()
    with tarfile.open(cut_short) as tar:  # cut inside the third sample's image
        third = [m for m in tar.getmembers() if m.name.endswith(".jpg")][2]
    cut_short.write_bytes(data[: third.offset_data + 4])

    out = str(tmp_path / "export")
    summary = run("wds", out, shard_size=6)
    problems = {p["image_id"]: p for p in summary.problems}
    broken = [s["image_id"] for s in samples if s["shard"] == "shard-000002.tar"]
    assert problems[ghost["image_id"]]["problem"] == "missing"
    assert problems[gone["image_id"]]["problem"] == "missing"
    assert {problems[i]["problem"] for i in broken[2:]} == {"unreadable"}
    assert set(problems) == {ghost["image_id"], gone["image_id"], *broken[2:]}
    assert summary.images == len(kept) - len(problems) == 17
    # Planned over all 22 kept rows; each shard is short by the failures among its rows:
    # the ghost (position 5), shard 2's last three (13-15), the gone shard's row (21).
    assert [s["planned"] for s in summary.shards] == [6, 6, 5, 5]
    assert [s["images"] for s in summary.shards] == [5, 6, 2, 4]
    back = read_webdataset(out)
    exported = {json.loads(s["json"])["image_id"] for s in back}
    assert exported == {s["image_id"] for _, s in kept} - set(problems)
    gaps = {5, 13, 14, 15, 21}
    assert [int(s["__key__"]) for s in back] == sorted(set(range(22)) - gaps)
    record = json.loads(Path(out, "_export.json").read_text())
    assert record["problem_counts"] == {"missing": 2, "unreadable": 3}
    assert {p["image_id"] for p in record["problems"]} == set(problems)

    # A shard all of whose images failed is still there, empty, so the names run on.
    single = str(tmp_path / "single")
    summary = run("wds", single, shard_size=1)
    assert [s["images"] for s in summary.shards] == [int(i not in gaps) for i in range(22)]
    assert len(read_webdataset(single)) == len(samples_of("wds", single)) == 17


def drop_member_sample(tar_path: Path, key: str) -> None:
    """Rewrites a source tar without the sample `key`."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            if not member.name.startswith(f"{key}."):
                tar.addfile(member, io.BytesIO(data))


def test_a_missing_source_image_makes_its_shard_one_smaller(ray_local, tmp_path):
    uri = str(tmp_path / "wds")
    samples = write_dataset("wds", uri, identities=2, per_identity=5)  # 2 shards of 5
    kept = select({"faces": (uri, "wds", samples)}, lambda *_: True)
    gone = samples[7]["image_id"]
    drop_member_sample(tmp_path / "wds" / "shard-000001.tar", gone.rpartition("/")[2])

    out = str(tmp_path / "export")
    summary = run("wds", out, shard_size=5)
    assert summary.images == 9
    assert [(p["image_id"], p["problem"]) for p in summary.problems] == [(gone, "missing")]
    record = json.loads(Path(out, "_export.json").read_text())
    assert record["shards"] == [
        {"name": "shard-000000.tar", "first": 0, "planned": 5, "images": 5},
        {"name": "shard-000001.tar", "first": 5, "planned": 5, "images": 4},
    ]
    assert record["images"] == 9 and record["problem_counts"] == {"missing": 1}
    second = list(webdataset.WebDataset(f"{out}/shard-000001.tar", shardshuffle=False))
    assert [s["__key__"] for s in second] == ["000000005", "000000006", "000000008", "000000009"]
    assert [json.loads(s["json"])["image_id"] for s in second] == [
        s["image_id"] for _, s in kept[5:] if s["image_id"] != gone
    ]


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_boundary_source_shards_are_split_across_output_shards(
    ray_local, tmp_path, two_sources, groups
):
    # Output shards of at most 4 over the rec source (one record range of 20, so a slice of
    # it in five outputs) and the wds source (tars of 5, 5 and 2): source shards straddle
    # output boundaries, and the two datasets meet inside one output.
    kept = select(two_sources, lambda d, n: n % 7 != 3)
    planned = run("wds", str(tmp_path / "plan"), shard_size=4, dry_run=True)
    assert [s["planned"] for s in planned.shards] == balanced_sizes(len(kept), 4) == [4] * 6 + [3]
    assert not (tmp_path / "plan").exists()

    out = str(tmp_path / "export")
    summary = run("wds", out, shard_size=4)
    assert summary.problems == [] and summary.images == len(kept)
    exported = []
    for number, output in enumerate(planned.shards):
        name = f"shard-{number:06d}.tar"
        samples = list(webdataset.WebDataset(f"{out}/{name}", shardshuffle=False))
        first = output["first"]
        assert [int(s["__key__"]) for s in samples] == list(range(first, first + output["planned"]))
        exported += [(json.loads(s["json"]), s["jpg"]) for s in samples]
    assert [(m["dataset"], m["image_id"], m["identity"], jpg) for m, jpg in exported] == triples(
        kept
    )


def test_samples_come_out_in_export_order_whatever_the_reader_order(ray_local, tmp_path):
    uri = tmp_path / "wds"
    uri.mkdir()
    keys = ["b10", "b9", "b2", "b11", "b1"]  # tar order; export order is b1 b2 b9 b10 b11
    with tarfile.open(uri / "shard-000000.tar", "w") as tar:
        for n, key in enumerate(keys):
            for name, data in (
                (f"{key}.jpg", fake_jpeg(n)),
                (f"{key}.json", json.dumps({"identity": key}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    select({"faces": (str(uri), "wds", samples_of("wds", str(uri)))}, lambda *_: True)
    out = str(tmp_path / "export")
    summary = run("wds", out, shard_size=3)
    assert [s["images"] for s in summary.shards] == [3, 2] and summary.problems == []
    back = read_webdataset(out)
    order = ["b1", "b2", "b9", "b10", "b11"]
    assert [json.loads(s["json"])["identity"] for s in back] == order
    assert [s["jpg"] for s in back] == [fake_jpeg(keys.index(k)) for k in order]


# --- list and parquet -------------------------------------------------------------------------


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_list_holds_the_kept_keys(ray_local, tmp_path, two_sources, groups):
    kept = select(two_sources, lambda d, n: n % 2 == 0)
    out = tmp_path / "lists" / "kept.tsv"
    summary = run("list", str(out))
    lines = out.read_text().splitlines()
    assert lines[0] == "dataset\timage_id\tidentity"
    assert [tuple(ln.split("\t")) for ln in lines[1:]] == [t[:3] for t in triples(kept)]
    assert summary.images == len(kept) and summary.files == [str(out)]
    assert os.listdir(out.parent) == ["kept.tsv"]  # no temporary file left


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_parquet_holds_the_kept_keys(ray_local, tmp_path, two_sources, groups):
    kept = select(two_sources, lambda d, n: n % 3 != 0)
    out = tmp_path / "out" / "kept.parquet"
    run("parquet", str(out))
    table = pq.read_table(out)
    assert table.column_names == ["dataset", "image_id", "identity"]
    assert [tuple(r.values()) for r in table.to_pylist()] == [t[:3] for t in triples(kept)]
    record = json.loads(table.schema.metadata[b"fiqa.export"])
    assert record["images"] == len(kept) and record["selection"] == SELECTION
    assert os.listdir(out.parent) == ["kept.parquet"]  # no temporary file left


@pytest.mark.parametrize("groups", ["one", "many"], indirect=True)
def test_parquet_with_bytes_is_written_in_parts(ray_local, tmp_path, two_sources, groups):
    uri, fmt, samples = two_sources["faces-wds"]
    ghost = {**samples[0], "image_id": "shard-000000.tar/nobody_00"}  # never was in the shard
    sources = {**two_sources, "faces-wds": (uri, fmt, [samples[0], ghost, *samples[1:]])}
    kept = select(sources, lambda d, n: n % 3 != 0)
    out = str(tmp_path / "kept")
    summary = run("parquet", out, with_bytes=True, shard_size=4)
    parts = [f"part-{i:06d}.parquet" for i in range(6)]
    assert sorted(os.listdir(out)) == ["_export.json", *parts]
    assert summary.kept == len(kept) == 13 + 8 and summary.images == 20
    assert [s["planned"] for s in summary.shards] == [4, 4, 4, 3, 3, 3]
    # 13 rec rows, then the wds source's first shard: three kept images and the ghost, which
    # sorts last (position 16, in the fifth part).
    assert [s["images"] for s in summary.shards] == [4, 4, 4, 3, 2, 3]
    assert summary.problems[0]["image_id"] == ghost["image_id"]
    tables = [pq.read_table(f"{out}/{p}") for p in parts]
    assert [t.num_rows for t in tables] == [s["images"] for s in summary.shards]
    assert tables[0].column_names == ["dataset", "image_id", "identity", "image"]
    rows = [tuple(r.values()) for t in tables for r in t.to_pylist()]
    assert rows == [t for t in triples(kept) if t[1] != ghost["image_id"]]
    record = json.loads(Path(out, "_export.json").read_text())
    assert [s["name"] for s in record["shards"]] == record["files"] == parts
    assert record["images"] == 20 and record["problem_counts"] == {"missing": 1}
    assert [p["image_id"] for p in record["problems"]] == [ghost["image_id"]]


def test_only_targets_that_read_images_need_a_recorded_source(tmp_path, rec):
    uri, samples = rec
    select({"faces": (uri, "rec", samples)}, lambda *_: True)
    chosen = load_selection(open_catalog(), SELECTION)
    write_selection(open_catalog(), SELECTION, chosen.rows, {**chosen.info, "sources": {}})
    assert run("list", str(tmp_path / "kept.tsv")).images == len(samples)
    with pytest.raises(SelectionError, match="no source recorded for dataset 'faces'"):
        run("rec-idx", str(tmp_path / "x"))


# --- refusals ---------------------------------------------------------------------------------


def test_refusals(tmp_path, rec):
    uri, samples = rec
    with pytest.raises(SelectionError, match="run 'fiqa filter' first"):
        run("list", str(tmp_path / "a.tsv"))
    select({"faces": (uri, "rec", samples)}, lambda *_: False)
    with pytest.raises(ExportError, match="keeps no images"):
        run("list", str(tmp_path / "a.tsv"))
    with pytest.raises(ExportError, match="unknown export target 'zip'"):
        run("zip", str(tmp_path / "a.zip"))
