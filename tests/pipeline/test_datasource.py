import pytest

from pipeline.datasource import ShardDatasource, read_samples
from pipeline.formats import get_format
from pipeline.inspection import inspect_dataset, size_bucket
from pipeline.storage import filesystem
from tests.pipeline.test_formats import write


@pytest.fixture
def wds_dataset(tmp_path):
    fs, root = filesystem(str(tmp_path / "wds"))
    written = write(get_format("wds"), fs, root, shard_size=10)
    return str(tmp_path / "wds"), written


def test_one_read_task_per_shard(wds_dataset):
    uri, _ = wds_dataset
    source = ShardDatasource("wds", uri)
    assert len(source.get_read_tasks(parallelism=1)) == len(source.shards) == 4


def test_ray_read_gives_every_sample_once(ray_local, wds_dataset):
    uri, written = wds_dataset
    rows = read_samples("wds", uri, rows_per_block=3).take_all()
    assert sorted(r["image_id"] for r in rows) == sorted(written)
    assert all(r["image"] == written[r["image_id"]][1] for r in rows)


def test_a_broken_shard_is_recorded_and_the_rest_is_read(ray_local, wds_dataset, tmp_path):
    uri, written = wds_dataset
    broken = sorted((tmp_path / "wds").glob("*.tar"))[1]
    broken.write_bytes(broken.read_bytes()[:2000])
    rows = read_samples("wds", uri).take_all()
    shard_rows = [r for r in rows if r["image_id"] == r["shard"]]
    assert [r["image_id"] for r in shard_rows] == [broken.name]
    assert shard_rows[0]["status"] == "read_error" and "shard error" in shard_rows[0]["error"]
    others = {r["image_id"] for r in rows if r["shard"] != broken.name}
    assert others == {k for k in written if not k.startswith(broken.name)}


def test_inspect_counts(ray_local, wds_dataset):
    uri, _ = wds_dataset
    summary = inspect_dataset("wds", uri, show=2)
    assert (summary.shards, summary.images, summary.identities) == (4, 35, 5)
    assert summary.statuses == {"ok": 35} and summary.sizes == {"<64": 35}
    assert len(summary.examples) == 2 and "image" not in summary.examples[0]


def test_size_buckets():
    assert size_bucket(112, 112) == "112x112"
    assert size_bucket(112, 96) == "112-255"
    assert [size_bucket(s, s) for s in (10, 100, 200, 300, 4000)] == [
        "<64",
        "64-111",
        "112-255",
        "256-511",
        ">=512",
    ]
