"""The insightface RecordIO format: framing, layout, round trips, shards and corruption."""

from __future__ import annotations

import io
import random
import struct
import uuid

import fsspec
import pytest

from pipeline.formats import rec
from pipeline.formats.base import Shard, ShardError
from pipeline.formats.rec import RecFormat, read_index
from pipeline.formats.recordio import (
    MAGIC,
    ImageHeader,
    RecordError,
    iter_records,
    pack_image_header,
    pack_record,
    read_record_at,
    unpack_image_header,
)
from pipeline.status import OK, READ_ERROR

pytestmark = pytest.mark.timeout(20)

MAGIC_BYTES = struct.pack("<I", MAGIC)


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    """(fs, root) of an empty dataset folder, in memory or on local disk."""
    if request.param == "file":
        yield fsspec.filesystem("file"), str(tmp_path / "ds")
        return
    fs, root = fsspec.filesystem("memory"), f"/rec-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def mem():
    fs, root = fsspec.filesystem("memory"), f"/rec-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def image(i: int) -> bytes:
    """Distinct fake image bytes of varying length (the reader never decodes)."""
    return f"img-{i}-".encode() * (1 + i % 5)


def write(fs, root, identities: list[str | None], images: list[bytes] | None = None):
    """Writes one image per identity; returns [(image_id, identity, bytes)]."""
    images = images or [image(i) for i in range(len(identities))]
    with RecFormat().writer(fs, root) as w:
        return [
            (w.write(f"k{i}", who, img, "jpg"), who, img)
            for i, (who, img) in enumerate(zip(identities, images, strict=True))
        ]


def grouped(sizes: list[int], named: bool = False) -> list[str]:
    return [f"person-{c}" if named else str(c) for c, n in enumerate(sizes) for _ in range(n)]


def read_all(fs, root, per_shard: int = 1000) -> list[dict]:
    fmt = RecFormat(per_shard)
    return [row for shard in fmt.list_shards(fs, root) for row in fmt.read_shard(fs, root, shard)]


def whole_file_rows(fs, root) -> list[dict]:
    fs.rm(f"{root}/train.idx")
    return read_all(fs, root)


def triples(rows: list[dict]) -> list[tuple]:
    return [(r["image_id"], r["identity"], r["image"]) for r in rows]


def patch(fs, path: str, offset: int, data: bytes) -> None:
    blob = bytearray(fs.cat_file(path))
    blob[offset : offset + len(data)] = data
    fs.pipe_file(path, bytes(blob))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["image_id"]: r for r in rows}


# --- framing ----------------------------------------------------------------------------------


def test_plain_record_is_one_padded_part():
    packed = pack_record(b"abcde")
    assert packed == struct.pack("<II", MAGIC, 5) + b"abcde\0\0\0"
    assert read_record_at(io.BytesIO(packed), 0) == (b"abcde", len(packed))


@pytest.mark.parametrize(
    "payload",
    [
        MAGIC_BYTES,
        MAGIC_BYTES + b"tail",
        b"head" + MAGIC_BYTES,
        b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"xyz",
        b"12345678" + MAGIC_BYTES + b"\x01",
    ],
)
def test_payload_with_aligned_magic_is_split_and_joined(payload):
    packed = pack_record(payload)
    flags = [lrec >> 29 for _, lrec in part_headers(packed)]
    cuts = sum(payload[i : i + 4] == MAGIC_BYTES for i in range(0, len(payload) - 3, 4))
    assert flags == [1] + [2] * (cuts - 1) + [3]
    # Every aligned magic in the output starts a part: none is left inside a payload.
    aligned = [i for i in range(0, len(packed), 4) if packed[i : i + 4] == MAGIC_BYTES]
    assert len(aligned) == len(flags)
    assert read_record_at(io.BytesIO(packed), 0) == (payload, len(packed))


def test_unaligned_magic_is_not_split():
    payload = b"ab" + MAGIC_BYTES + b"cd"
    packed = pack_record(payload)
    assert [lrec >> 29 for _, lrec in part_headers(packed)] == [0]
    assert read_record_at(io.BytesIO(packed), 0)[0] == payload


def part_headers(packed: bytes) -> list[tuple[int, int]]:
    """(offset, lrecord) of each part, walking the framing by hand."""
    out, pos = [], 0
    while pos < len(packed):
        magic, lrec = struct.unpack_from("<II", packed, pos)
        assert magic == MAGIC
        out.append((pos, lrec))
        pos += 8 + ((lrec & (1 << 29) - 1) + 3) // 4 * 4
    return out


def test_iter_records_walks_records_and_split_records():
    payloads = [b"one", MAGIC_BYTES * 3, b"", b"four" * 9]
    blob = b"".join(pack_record(p) for p in payloads)
    assert [p for _, p in iter_records(io.BytesIO(blob))] == payloads


def test_image_header_round_trip():
    for header in (ImageHeader(3.0, 7, 1), ImageHeader((1.0, 2.5, -4.0), 9)):
        assert unpack_image_header(pack_image_header(header) + b"jpeg") == (header, b"jpeg")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"short", "shorter than"),
        (struct.pack("<IfQQ", 1 << 30, 0.0, 0, 0) + b"x" * 8, "announces"),
    ],
)
def test_bad_image_header_raises_record_error(payload, message):
    with pytest.raises(RecordError, match=message):
        unpack_image_header(payload)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("named", [False, True])
def test_round_trip(store, named):
    fs, root = store
    written = write(fs, root, grouped([3, 1, 5, 2, 4], named))
    rows = read_all(fs, root, per_shard=4)
    assert all(r["status"] == OK and r["error"] is None for r in rows)
    assert triples(rows) == written
    assert [r["image_id"] for r in rows] == [f"train.rec#{k}" for k in range(1, 16)]
    assert fs.exists(f"{root}/identities.tsv") == named


def test_payload_containing_magic_round_trips(mem):
    fs, root = mem
    # Image bytes start 24 bytes into the payload (aligned), so these occurrences are aligned.
    tricky = [MAGIC_BYTES + b"jpeg" + MAGIC_BYTES, b"ab" + MAGIC_BYTES, MAGIC_BYTES]
    written = write(fs, root, ["0", "0", "1"], tricky)
    assert triples(read_all(fs, root)) == written
    assert triples(whole_file_rows(fs, root)) == written


def test_real_png_bytes_round_trip(mem):
    from PIL import Image

    fs, root = mem
    pngs = []
    for shade in (0, 128, 255):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    written = write(fs, root, ["a", "a", "b"], pngs)
    assert triples(read_all(fs, root)) == written


def test_rewriting_with_index_identities_drops_stale_names(mem):
    fs, root = mem
    write(fs, root, grouped([2, 2], named=True))
    written = write(fs, root, grouped([1, 3]))
    assert not fs.exists(f"{root}/identities.tsv")
    assert triples(read_all(fs, root)) == written


def test_writer_rejects_identity_that_reappears(mem):
    fs, root = mem
    w = RecFormat().writer(fs, root)
    w.write("a1", "alice", b"x", "jpg")
    w.write("b1", "bob", b"x", "jpg")
    with pytest.raises(ValueError, match="reappears"):
        w.write("a2", "alice", b"x", "jpg")
    with pytest.raises(ValueError, match="identity needed"):
        w.write("n1", None, b"x", "jpg")
    with pytest.raises(ValueError, match="tab"):
        w.write("t1", "a\tb", b"x", "jpg")
    w.close()
    assert [r["identity"] for r in read_all(fs, root)] == ["alice", "bob"]


def test_writer_refuses_keys_float32_cannot_hold(mem, monkeypatch):
    fs, root = mem
    monkeypatch.setattr(rec, "MAX_LABEL", 5)  # end label = images + 1 + classes
    w = RecFormat().writer(fs, root)
    w.write("a", "0", b"x", "jpg")
    w.write("b", "0", b"x", "jpg")
    w.write("c", "0", b"x", "jpg")
    with pytest.raises(ValueError, match="float32"):
        w.write("d", "0", b"x", "jpg")
    w.close()
    assert len(read_all(fs, root)) == 3


def test_empty_dataset(mem):
    fs, root = mem
    RecFormat().writer(fs, root).close()
    assert RecFormat().list_shards(fs, root) == []
    assert fs.cat_file(f"{root}/property") == b"0,112,112\n"


# --- the insightface layout -------------------------------------------------------------------


def test_written_dataset_has_insightface_layout(mem):
    fs, root = mem
    sizes = [3, 1, 4]
    write(fs, root, grouped(sizes, named=True))
    with fs.open(f"{root}/train.rec", "rb") as f:
        records = list(iter_records(f))
    n, m = sum(sizes), len(sizes)
    assert len(records) == 1 + n + m
    assert read_index(fs, f"{root}/train.idx") == {k: off for k, (off, _) in enumerate(records)}

    header, rest = unpack_image_header(records[0][1])
    assert records[0][0] == 0 and header.label == (n + 1, n + 1 + m) and rest == b""

    starts = [1, 4, 5]
    for k in range(1, n + 1):
        header, img = unpack_image_header(records[k][1])
        cls = sum(k >= s for s in starts) - 1
        assert header == ImageHeader(float(cls), k, 0) and img == image(k - 1)
    for c in range(m):
        header, rest = unpack_image_header(records[n + 1 + c][1])
        stop = starts[c + 1] if c + 1 < m else n + 1
        assert header.label == (starts[c], stop) and rest == b""

    assert fs.cat_file(f"{root}/property") == b"3,112,112\n"
    assert fs.cat_file(f"{root}/identities.tsv") == b"0\tperson-0\n1\tperson-1\n2\tperson-2\n"


def test_reads_an_im2rec_file_without_header(mem):
    fs, root = mem
    blob, lines = b"", []
    for key in (0, 1, 2, 7):  # no header record 0, sparse keys, index not in key order
        lines.append(f"{key}\t{len(blob)}\n")
        blob += pack_record(pack_image_header(ImageHeader(float(key * 10), key)) + image(key))
    fs.pipe_file(f"{root}/train.rec", blob)
    fs.pipe_file(f"{root}/train.idx", "".join(reversed(lines)).encode())
    shards = RecFormat(3).list_shards(fs, root)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (7, 8)]
    rows = read_all(fs, root, per_shard=3)
    assert [(r["image_id"], r["identity"]) for r in rows] == [
        ("train.rec#0", "0"),
        ("train.rec#1", "10"),
        ("train.rec#2", "20"),
        ("train.rec#7", "70"),
    ]
    assert [r["image"] for r in rows] == [image(k) for k in (0, 1, 2, 7)]


# --- shards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("per_shard", [1, 3, 10, 11, 1000])
def test_shards_cover_every_image_record_once(mem, per_shard):
    fs, root = mem
    written = write(fs, root, grouped([4, 4, 3]))
    shards = RecFormat(per_shard).list_shards(fs, root)
    covered = [k for s in shards for k in range(s.start, s.stop)]
    assert covered == list(range(1, 12))
    assert all(0 < s.stop - s.start <= per_shard for s in shards)
    assert [s.key for s in shards] == [f"train.rec#{s.start}-{s.stop}" for s in shards]
    rows = read_all(fs, root, per_shard)
    assert triples(rows) == written
    assert [r["shard"] for r in rows] == [s.key for s in shards for _ in range(s.start, s.stop)]


def test_without_index_one_shard_is_scanned(store):
    fs, root = store
    written = write(fs, root, grouped([2, 3], named=True))
    fs.rm(f"{root}/train.idx")
    assert RecFormat().list_shards(fs, root) == [Shard("train.rec", f"{root}/train.rec")]
    assert triples(read_all(fs, root)) == written


def test_rec_file_reads_an_index_of_another_files_records(mem):
    """An exported index: keys 0..K-1 at the offsets of some image records of a .rec with a
    header. Its record 0 is a flag-0 image, so there is no header and every key is an image."""
    fs, root = mem
    written = write(fs, root, grouped([3, 2, 4]))
    offsets = read_index(fs, f"{root}/train.idx")
    chosen = [3, 5, 6, 9]
    subset = f"{root}-subset"
    fs.pipe_file(
        f"{subset}/train.idx",
        "".join(f"{k}\t{offsets[key]}\n" for k, key in enumerate(chosen)).encode(),
    )
    fmt = RecFormat(3, rec_file=f"memory://{root}/train.rec")
    assert [(s.start, s.stop, s.path) for s in fmt.list_shards(fs, subset)] == [
        (0, 3, f"{root}/train.rec"),
        (3, 4, f"{root}/train.rec"),
    ]
    rows = [r for s in fmt.list_shards(fs, subset) for r in fmt.read_shard(fs, subset, s)]
    assert [(r["image_id"], r["identity"], r["image"]) for r in rows] == [
        (f"train.rec#{k}", *written[key - 1][1:]) for k, key in enumerate(chosen)
    ]
    fs.rm(subset, recursive=True)


def test_missing_rec_is_a_clear_error(mem):
    fs, root = mem
    with pytest.raises(FileNotFoundError, match=r"train\.rec"):
        RecFormat().list_shards(fs, root)


def test_records_per_shard_must_be_positive():
    with pytest.raises(ValueError, match="records_per_shard"):
        RecFormat(0)


# --- corruption -------------------------------------------------------------------------------

N, BAD = 8, 5  # a dataset of N images; record BAD gets damaged


@pytest.fixture
def damaged(mem):
    """(fs, root, written, offsets) of an N-image dataset about to be damaged."""
    fs, root = mem
    written = write(fs, root, grouped([3, 3, 2]))
    return fs, root, written, read_index(fs, f"{root}/train.idx")


def assert_only_bad(rows, written, message: str) -> None:
    """Every record but BAD reads back intact; BAD is a read_error matching `message`."""
    assert [r["image_id"] for r in rows] == [w[0] for w in written]
    for row, want in zip(rows, written, strict=True):
        if row["image_id"] == f"train.rec#{BAD}":
            assert row["status"] == READ_ERROR and row["image"] is None
            assert message in row["error"], row["error"]
        else:
            assert row["status"] == OK and (row["image_id"], row["identity"], row["image"]) == want


def assert_scan_stops_at_bad(rows, written, message: str) -> None:
    assert triples(rows[: BAD - 1]) == written[: BAD - 1]
    assert all(r["status"] == OK for r in rows[: BAD - 1])
    assert len(rows) == BAD
    last = rows[-1]
    assert last["image_id"] == f"train.rec#{BAD}" and last["status"] == READ_ERROR
    assert message in last["error"] and "scan stopped" in last["error"], last["error"]


def test_bad_magic(damaged):
    fs, root, written, offsets = damaged
    patch(fs, f"{root}/train.rec", offsets[BAD], b"\xde\xad\xbe\xef")
    assert_only_bad(read_all(fs, root, per_shard=3), written, "bad magic 0xefbeadde")
    assert_scan_stops_at_bad(whole_file_rows(fs, root), written, "bad magic")


def test_unexpected_continuation_flag(damaged):
    fs, root, written, offsets = damaged
    length = struct.unpack_from("<I", fs.cat_file(f"{root}/train.rec"), offsets[BAD] + 4)[0]
    patch(fs, f"{root}/train.rec", offsets[BAD] + 4, struct.pack("<I", 2 << 29 | length))
    assert_only_bad(read_all(fs, root), written, "unexpected continuation flag 2")


def test_truncated_payload(damaged):
    fs, root, written, offsets = damaged
    path = f"{root}/train.rec"
    fs.pipe_file(path, fs.cat_file(path)[: offsets[BAD] + 8 + 10])
    rows = read_all(fs, root)
    assert triples(rows[: BAD - 1]) == written[: BAD - 1]
    assert "past byte" in rows[BAD - 1]["error"]
    assert all("outside train.rec" in r["error"] for r in rows[BAD:])
    assert [r["status"] for r in rows] == [OK] * (BAD - 1) + [READ_ERROR] * (N - BAD + 1)
    assert_scan_stops_at_bad(whole_file_rows(fs, root), written, "past byte")


def test_index_entry_past_end_of_file(damaged):
    fs, root, written, _ = damaged
    size = fs.size(f"{root}/train.rec")
    lines = fs.cat_file(f"{root}/train.idx").decode().splitlines(keepends=True)
    lines[BAD] = f"{BAD}\t{size + 1000}\n"
    fs.pipe_file(f"{root}/train.idx", "".join(lines).encode())
    assert_only_bad(read_all(fs, root), written, f"offset {size + 1000} is outside train.rec")


def test_missing_index_entry(damaged):
    fs, root, written, _ = damaged
    lines = fs.cat_file(f"{root}/train.idx").decode().splitlines(keepends=True)
    del lines[BAD]
    fs.pipe_file(f"{root}/train.idx", "".join(lines).encode())
    assert_only_bad(read_all(fs, root), written, f"no train.idx entry for record {BAD}")


@pytest.mark.parametrize("into_next", [False, True])
def test_garbage_length(damaged, into_next):
    """Past the end of the file, or only into the next record: both are caught."""
    fs, root, written, offsets = damaged
    length = offsets[BAD + 1] - offsets[BAD] - 4 if into_next else (1 << 29) - 1
    patch(fs, f"{root}/train.rec", offsets[BAD] + 4, struct.pack("<I", length))
    rows = read_all(fs, root)
    assert_only_bad(rows, written, f"claims {length} bytes")
    assert "next indexed record" in by_id(rows)[f"train.rec#{BAD}"]["error"]


def test_garbage_length_without_index_stops_the_scan(damaged):
    fs, root, written, offsets = damaged
    patch(fs, f"{root}/train.rec", offsets[BAD] + 4, struct.pack("<I", (1 << 29) - 1))
    assert_scan_stops_at_bad(whole_file_rows(fs, root), written, "claims")


def test_unreadable_header_record(damaged):
    fs, root, _, _ = damaged
    patch(fs, f"{root}/train.rec", 0, b"\0\0\0\0")
    with pytest.raises(ShardError, match=r"train.rec#0: header record unreadable: bad magic"):
        RecFormat().list_shards(fs, root)
    rows = whole_file_rows(fs, root)
    assert len(rows) == 1 and rows[0]["image_id"] == "train.rec#0"
    assert "bad magic" in rows[0]["error"]


def test_malformed_index_line(damaged):
    fs, root, _, _ = damaged
    shards = RecFormat().list_shards(fs, root)
    fs.pipe_file(f"{root}/train.idx", b"0\t0\nnot an index line\n")
    with pytest.raises(ShardError, match=r"train\.idx:2"):
        list(RecFormat().read_shard(fs, root, shards[0]))


def test_record_without_image_bytes(mem):
    fs, root = mem
    written = write(fs, root, ["0", "0", "1"], [b"a", b"", b"c"])
    rows = read_all(fs, root)
    assert triples([rows[0], rows[2]]) == [written[0], written[2]]
    assert (rows[1]["status"], rows[1]["identity"]) == (READ_ERROR, "0")
    assert rows[1]["error"] == "record holds no image bytes"


def test_a_file_of_garbage_ends_quickly(mem):
    fs, root = mem
    fs.pipe_file(f"{root}/train.rec", random.Random(0).randbytes(100_000))
    rows = read_all(fs, root)
    assert len(rows) == 1 and rows[0]["status"] == READ_ERROR


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("indexed", [True, False])
def test_random_damage_never_hangs_or_raises(mem, seed, indexed):
    fs, root = mem
    written = write(fs, root, grouped([5, 7, 4, 6]))
    path = f"{root}/train.rec"
    blob = bytearray(fs.cat_file(path))
    rng = random.Random(seed)
    for _ in range(8):
        blob[rng.randrange(40, len(blob))] = rng.randrange(256)  # record 0 stays intact
    fs.pipe_file(path, bytes(blob[: rng.randrange(len(blob) // 2, len(blob) + 1)]))
    rows = read_all(fs, root, per_shard=5) if indexed else whole_file_rows(fs, root)
    assert rows and len(rows) <= len(written)
    assert {r["status"] for r in rows} <= {OK, READ_ERROR}
    assert all(r["error"] for r in rows if r["status"] == READ_ERROR)
    if indexed:
        assert [r["image_id"] for r in rows] == [w[0] for w in written]


def test_read_images_finds_records_through_an_index_read_in_blocks(store, monkeypatch):
    # Blocks of about two lines, the lines shuffled and one key listed twice (the last
    # listing wins, as in mxnet): the wanted records are found without listing a shard.
    fs, root = store
    written = write(fs, root, grouped([4, 4, 3], named=True))
    lines = fs.cat_file(f"{root}/train.idx").decode().splitlines()
    offsets = dict(line.split("\t") for line in lines)
    shuffled = [f"5\t{offsets['9']}", *lines[::2][::-1], *lines[1::2], f"5\t{offsets['5']}"]
    fs.pipe_file(f"{root}/train.idx", "".join(f"{line}\n" for line in shuffled).encode())
    monkeypatch.setattr(rec, "INDEX_BLOCK_BYTES", 16)
    monkeypatch.setattr(RecFormat, "list_shards", lambda *_: pytest.fail("listed the shards"))
    wanted = {"train.rec#1-12": ["train.rec#2", "train.rec#5", "train.rec#11", "train.rec#99"]}
    rows = list(RecFormat().read_images(fs, root, wanted))
    expected = {image_id: (who, img) for image_id, who, img in written}
    assert [(r["image_id"], r["status"]) for r in rows] == [
        ("train.rec#2", OK),
        ("train.rec#5", OK),
        ("train.rec#11", OK),
    ]
    assert {r["image_id"]: (r["identity"], r["image"]) for r in rows} == {
        i: expected[i] for i in ("train.rec#2", "train.rec#5", "train.rec#11")
    }
    assert {r["shard"] for r in rows} == {"train.rec#1-12"}
