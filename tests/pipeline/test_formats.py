import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.formats import FORMATS, get_format
from pipeline.formats.base import ShardError
from pipeline.formats.folder import FolderFormat, write_index
from pipeline.status import READ_ERROR
from pipeline.storage import filesystem


def encoded(seed: int, ext: str = "png") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if ext == "png" else "JPEG")
    return buffer.getvalue()


def samples(identities: int = 5, per_identity: int = 7):
    for i in range(identities):
        for j in range(per_identity):
            yield f"{i:04d}_{j:03d}", f"id{i:03d}", encoded(i * 100 + j)


def write(fmt, fs, root, shard_size=10) -> dict[str, tuple[str, bytes]]:
    written = {}
    with fmt.writer(fs, root, shard_size=shard_size) as writer:
        for key, identity, image in samples():
            written[writer.write(key, identity, image, "png")] = (identity, image)
    return written


def read_all(fmt, fs, root):
    return [row for shard in fmt.list_shards(fs, root) for row in fmt.read_shard(fs, root, shard)]


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "dataset")
    if request.param == "memory":
        return f"memory://formats-{tmp_path.name}/dataset"
    return f"s3://{request.getfixturevalue('s3_bucket')}/dataset"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_round_trip_on_every_storage(name, storage):
    fs, root = filesystem(storage)
    fmt = get_format(name, **({"records_per_shard": 10} if name == "rec" else {}))
    written = write(fmt, fs, root)
    if name == "folder":
        write_index(fs, root, rows_per_shard=12)
    rows = read_all(fmt, fs, root)
    assert len(rows) == len(written) == 35
    assert {r["image_id"] for r in rows} == set(written)  # unique and stable
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert (row["identity"], row["image"]) == written[row["image_id"]]
    assert len({r["shard"] for r in rows}) > 1
    again = read_all(fmt, fs, root)
    assert [r["image_id"] for r in again] == [r["image_id"] for r in rows]


def test_wds_interoperates_with_the_webdataset_package(tmp_path):
    import webdataset as wds

    fs, root = filesystem(str(tmp_path / "ours"))
    written = write(get_format("wds"), fs, root)
    theirs = {}
    for tar in sorted((tmp_path / "ours").glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            theirs[f"{tar.name}/{s['__key__']}"] = (s["json"], s["png"])
    assert set(theirs) == set(written)
    for image_id, (meta, image) in theirs.items():
        assert image == written[image_id][1]
        assert b'"identity": "' + written[image_id][0].encode() in meta

    (tmp_path / "theirs").mkdir()
    with wds.ShardWriter(str(tmp_path / "theirs/part-%04d.tar"), maxcount=4) as sink:
        for key, identity, image in samples(2, 5):
            sink.write({"__key__": key, "jpg": image, "json": {"identity": identity}})
    fs, root = filesystem(str(tmp_path / "theirs"))
    rows = read_all(get_format("wds"), fs, root)
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    assert {r["identity"] for r in rows} == {"id000", "id001"}


@pytest.mark.timeout(30)
def test_wds_truncated_tar_keeps_what_is_readable(tmp_path):
    fs, root = filesystem(str(tmp_path))
    write(get_format("wds"), fs, root, shard_size=100)
    tar = next(tmp_path.glob("*.tar"))
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) * 2 // 3])
    fmt = get_format("wds")
    [shard] = fmt.list_shards(fs, root)
    rows = []
    with pytest.raises(ShardError, match="unreadable tar"):
        for row in fmt.read_shard(fs, root, shard):
            rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    assert 15 <= len(ok) < 35
    assert rows[-1]["status"] == READ_ERROR and "truncated" in rows[-1]["error"]


@pytest.mark.timeout(30)
def test_wds_sample_without_image_is_a_read_error(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, data in [
            ("k1.json", b'{"identity": "x"}'),
            ("k2.json", b"{bad"),
            ("k2.png", encoded(1)),
            ("k3.cls", b"7\n"),
            ("k3.png", encoded(2)),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs, root = filesystem(str(tmp_path))
    rows = read_all(get_format("wds"), fs, root)
    assert [(r["image_id"], r["status"]) for r in rows] == [
        ("a.tar/k1", READ_ERROR),
        ("a.tar/k2", READ_ERROR),
        ("a.tar/k3", "ok"),
    ]
    assert "expected one image member" in rows[0]["error"] and rows[2]["identity"] == "7"


@pytest.mark.timeout(30)
def test_folder_index_is_the_shard_list_and_missing_objects_are_read_errors(tmp_path):
    fs, root = filesystem(str(tmp_path))
    written = write(get_format("folder"), fs, root)
    index = write_index(fs, root, rows_per_shard=10)
    assert len(index) == 4
    fmt = FolderFormat()
    assert [s.path for s in fmt.list_shards(fs, root)] == index
    removed = sorted(written)[3]
    (tmp_path / removed).unlink()
    rows = read_all(fmt, fs, root)
    assert len(rows) == 35
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["image_id"] for r in bad] == [removed] and bad[0]["status"] == READ_ERROR


def test_folder_without_index_is_listed(tmp_path):
    fs, root = filesystem(str(tmp_path))
    write(get_format("folder"), fs, root)
    fmt = FolderFormat(files_per_shard=8)
    assert len(fmt.list_shards(fs, root)) == 5
    assert len(read_all(fmt, fs, root)) == 35


def test_parquet_hugging_face_struct_and_configurable_columns(tmp_path):
    images = [encoded(i) for i in range(3)]
    table = pa.table(
        {
            "img": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)]),
            "person": ["a", "b", None],
        }
    )
    pq.write_table(table, tmp_path / "hf.parquet")
    fs, root = filesystem(str(tmp_path))
    fmt = get_format("parquet", image_column="img", identity_column="person", key_column=None)
    rows = read_all(fmt, fs, root)
    assert [r["image_id"] for r in rows] == ["hf.parquet#0", "hf.parquet#1", "hf.parquet#2"]
    assert [r["image"] for r in rows] == images
    assert [r["identity"] for r in rows] == ["a", "b", None]


@pytest.mark.timeout(30)
def test_parquet_without_the_image_column_is_a_shard_error(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"], "identity": ["a"]}), tmp_path / "p.parquet")
    fs, root = filesystem(str(tmp_path))
    fmt = get_format("parquet")
    [shard] = fmt.list_shards(fs, root)
    with pytest.raises(ShardError, match="no image column 'image' \\(columns: pixels, identity"):
        list(fmt.read_shard(fs, root, shard))


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format 'lmdb'"):
        get_format("lmdb")
