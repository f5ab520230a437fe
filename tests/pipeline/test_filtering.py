"""The bucketed filter (Ray tasks over buckets of identities) against the single query."""

import itertools

import numpy as np
import pytest

from pipeline.filtering import filter_manifest, ordered_keys
from pipeline.policy import FilterPolicy, apply_policy
from pipeline.query import open_query
from pipeline.selection import load_selection, summarise
from tests.manifests import manifest_rows, sqlite_catalog, write_manifest

RULES = [
    {},
    {"min_quality": 0.3},
    {"drop_bottom_percent": 37},
    {"drop_bottom_percent": 0.1},  # floor(n * 0.1%) = 0: drops none
    {"drop_bottom_percent": 100},
    {"drop_bottom_percent_per_identity": 30},
    {"top_k_per_identity": 3},
    {"min_images_per_identity": 5},
    {"ok_only": False, "drop_bottom_percent": 25, "top_k_per_identity": 4},
    {
        "min_quality": 0.1,
        "drop_bottom_percent": 20,
        "drop_bottom_percent_per_identity": 25,
        "top_k_per_identity": 6,
        "min_images_per_identity": 3,
    },
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Two datasets; qualities on a coarse grid (ties across identities and datasets), NaNs,
    failed images, images without identity, -0.0 beside 0.0; several data files."""
    root = tmp_path_factory.mktemp("filtering")
    catalog = sqlite_catalog(root)
    rng = np.random.default_rng(0)
    batches = []
    for dataset, start in itertools.product(("d1", "d2"), range(0, 600, 150)):
        rows = []
        for n in range(start, start + 150):
            quality = float(rng.integers(0, 12)) / 10 - 0.1  # -0.1 .. 1.0 in steps of 0.1
            status = "ok"
            if n % 41 == 0:
                quality = float("nan")
            elif n % 53 == 0:
                quality, status = None, "decode_error"
            elif n % 67 == 0:
                quality = -0.0
            rows.append(
                {
                    "dataset": dataset,
                    "image_id": f"img{n:04d}.jpg",
                    "shard": f"shard-{n // 100}",
                    "identity": None if n % 29 == 0 else f"id{n % 70}",
                    "status": status,
                    "quality": quality,
                }
            )
        batches.append(manifest_rows(rows, "m1"))
    write_manifest(catalog, "ns.manifest", *batches)
    return catalog


def outcome(rows) -> dict:
    keys = zip(rows["dataset"].to_pylist(), rows["image_id"].to_pylist(), strict=True)
    values = zip(rows["keep"].to_pylist(), rows["reason"].to_pylist(), strict=True)
    return dict(zip(keys, values, strict=True))


@pytest.mark.parametrize("rules", RULES, ids=lambda r: "-".join(r) or "default")
def test_buckets_select_what_the_single_query_selects(catalog, ray_local, rules):
    policy = FilterPolicy(**rules)
    with open_query(catalog, "ns.manifest") as query:
        expected, _ = apply_policy(query, policy)
    filtered = filter_manifest(
        catalog, "ns.manifest", "ns.sel", policy, rows_per_bucket=100, progress=lambda _: None
    )
    selection = load_selection(catalog, "ns.sel")
    assert len(selection.rows) == len(expected) == 1200
    assert outcome(selection.rows) == outcome(expected)
    assert filtered.info["summary"] == summarise(expected)
    table = catalog.load_table("ns.sel")
    assert len(table.scan().plan_files()) == 12  # a data file per bucket, in one snapshot
    assert table.current_snapshot().summary.operation.value in ("append", "overwrite")


def test_a_selection_replaced_by_buckets_keeps_no_old_rows(catalog, ray_local):
    for rules in ({"top_k_per_identity": 2}, {"min_quality": 0.5}):
        filter_manifest(
            catalog,
            "ns.manifest",
            "ns.again",
            FilterPolicy(**rules),
            rows_per_bucket=300,
            progress=lambda _: None,
        )
    rows = load_selection(catalog, "ns.again").rows
    assert len(rows) == 1200
    assert set(rows["reason"].to_pylist()) <= {"kept", "status", "min_quality"}


def test_ordered_keys_order_like_the_qualities():
    values = np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 0.25, 0.5, 1.0, np.inf], np.float32)
    keys = ordered_keys(values)
    assert keys[2] == keys[3]  # -0.0 ranks as 0.0, as in SQL
    assert np.all(np.diff(keys.astype(np.int64)[[0, 1, 3, 4, 5, 6, 7, 8]]) > 0)
