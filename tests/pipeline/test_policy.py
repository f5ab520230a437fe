"""Filter rules against hand-computed expectations on a small manifest."""

import pytest

from pipeline.policy import FilterPolicy, PolicyError, apply_policy
from pipeline.query import open_query
from tests.manifests import manifest_rows, sqlite_catalog, write_manifest

QUALITIES = {
    # identity A: ten images, a1 best
    **{f"a{i}": q for i, q in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 1)},
    "b1": 0.85,
    "b2": 0.45,
    "b3": 0.15,
    "c1": 0.95,
    "c2": 0.02,
}


@pytest.fixture
def query(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    rows = [{"image_id": k, "identity": k[0].upper(), "quality": q} for k, q in QUALITIES.items()]
    rows.append({"image_id": "b4", "identity": "B", "quality": None, "status": "decode_error"})
    # An older model's scores of the same images: the default is the newest model.
    old = [{**r, "quality": 0.5} for r in rows]
    write_manifest(
        catalog, "ns.manifest", manifest_rows(old, "m0", 0), manifest_rows(rows, "m1", 10)
    )
    q = open_query(catalog, "ns.manifest")
    yield q
    q.close()


def reasons(query, **rules) -> dict[str, str]:
    rows, model_id = apply_policy(query, FilterPolicy(**rules))
    assert model_id == rules.get("model_id", "m1")
    assert rows["keep"].to_pylist() == [r == "kept" for r in rows["reason"].to_pylist()]
    return dict(zip(rows["image_id"].to_pylist(), rows["reason"].to_pylist(), strict=True))


def dropped(query, **rules) -> dict[str, str]:
    return {k: r for k, r in reasons(query, **rules).items() if r != "kept"}


def test_status_only_by_default(query):
    assert dropped(query) == {"b4": "status"}


def test_ok_only_off_keeps_error_rows_through_quality_rules(query):
    assert dropped(query, ok_only=False, min_quality=0.1, top_k_per_identity=3) == {
        "a10": "min_quality",
        "c2": "min_quality",
        **{f"a{i}": "top_k_per_identity" for i in range(4, 10)},
        "b4": "top_k_per_identity",  # no quality: ranks after B's three scored images
    }


def test_min_quality_is_strict_below(query):
    assert dropped(query, min_quality=0.1) == {
        "b4": "status",
        "a10": "min_quality",
        "c2": "min_quality",
    }


def test_drop_bottom_percent_globally(query):
    # 15 ok images, floor(15 * 20 / 100) = 3 lowest: c2 0.02, a10 0.05, a9 0.1
    assert dropped(query, drop_bottom_percent=20) == {
        "b4": "status",
        "c2": "drop_bottom_percent",
        "a10": "drop_bottom_percent",
        "a9": "drop_bottom_percent",
    }


def test_drop_bottom_percent_per_identity(query):
    # A: floor(10 * 0.3) = 3; B: floor(3 * 0.3) = 0; C: floor(2 * 0.3) = 0
    rule = "drop_bottom_percent_per_identity"
    assert dropped(query, drop_bottom_percent_per_identity=30) == {
        "b4": "status",
        "a10": rule,
        "a9": rule,
        "a8": rule,
    }


def test_top_k_per_identity(query):
    rule = "top_k_per_identity"
    assert dropped(query, top_k_per_identity=2) == {
        "b4": "status",
        **{f"a{i}": rule for i in range(3, 11)},
        "b3": rule,
    }


def test_min_images_per_identity(query):
    # B has 3 ok images (b4 was dropped first), C only 2.
    assert dropped(query, min_images_per_identity=3) == {
        "b4": "status",
        "c1": "min_images_per_identity",
        "c2": "min_images_per_identity",
    }


def test_rules_compose_in_order(query):
    # min_quality drops a10, c2; 25% of A's 9 left = 2 (a9, a8), of B's 3 and C's 1 = 0;
    # then C has 1 image left (< 3) and goes.
    assert dropped(
        query, min_quality=0.1, drop_bottom_percent_per_identity=25, min_images_per_identity=3
    ) == {
        "b4": "status",
        "a10": "min_quality",
        "c2": "min_quality",
        "a9": "drop_bottom_percent_per_identity",
        "a8": "drop_bottom_percent_per_identity",
        "c1": "min_images_per_identity",
    }


def test_model_and_dataset_choice(query):
    assert set(reasons(query, model_id="m0").values()) == {"kept", "status"}
    with pytest.raises(PolicyError, match="no rows for model nope"):
        apply_policy(query, FilterPolicy(model_id="nope"))
    with pytest.raises(PolicyError, match="no scored rows"):
        apply_policy(query, FilterPolicy(datasets=["other"]))


def test_ties_break_by_image_id(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    rows = [{"image_id": i, "identity": "T", "quality": 0.5} for i in ("t2", "t1", "t3", "t4")]
    write_manifest(catalog, "ns.manifest", manifest_rows(rows))
    with open_query(catalog, "ns.manifest") as q:
        out, _ = apply_policy(q, FilterPolicy(drop_bottom_percent=50, top_k_per_identity=1))
    assert dict(zip(out["image_id"].to_pylist(), out["reason"].to_pylist(), strict=True)) == {
        "t1": "drop_bottom_percent",
        "t2": "drop_bottom_percent",
        "t3": "top_k_per_identity",
        "t4": "kept",  # ties rank by image_id for every rule: t4 is the best of them
    }


def test_nan_is_no_quality_and_unlabelled_rows_belong_to_no_identity(tmp_path):
    catalog = sqlite_catalog(tmp_path)
    rows = [
        {"image_id": "n1", "identity": "N", "quality": float("nan")},
        {"image_id": "n2", "identity": "N", "quality": 0.9},
        {"image_id": "n3", "identity": "N", "quality": 0.1},
        {"image_id": "u1", "identity": None, "quality": 0.2},
        {"image_id": "u2", "identity": None, "quality": 0.3},
    ]
    write_manifest(catalog, "ns.manifest", manifest_rows(rows))
    with open_query(catalog, "ns.manifest") as q:
        out, _ = apply_policy(
            q, FilterPolicy(top_k_per_identity=1, min_images_per_identity=2, min_quality=0.05)
        )
    assert dict(zip(out["image_id"].to_pylist(), out["reason"].to_pylist(), strict=True)) == {
        "n1": "top_k_per_identity",  # NaN ranks after every scored image, like no quality
        "n2": "min_images_per_identity",  # the identity is left with 1 image
        "n3": "top_k_per_identity",
        "u1": "kept",  # no identity: the per-identity rules leave them alone
        "u2": "kept",
    }
    assert out["quality"].null_count == 1


def test_a_selection_write_that_loses_a_race_fails_instead_of_doubling(tmp_path):
    from pyiceberg.exceptions import CommitFailedException

    from pipeline.filtering import filter_manifest
    from pipeline.selection import load_selection

    catalog = sqlite_catalog(tmp_path)
    rows = [{"image_id": f"x{i}", "identity": "X", "quality": i / 10} for i in range(5)]
    write_manifest(catalog, "ns.manifest", manifest_rows(rows))
    policy = FilterPolicy(top_k_per_identity=2)
    filter_manifest(catalog, "ns.manifest", "ns.top", policy)
    stale = catalog.load_table("ns.top")  # a run that read the table before another wrote it
    filter_manifest(catalog, "ns.manifest", "ns.top", policy)
    with pytest.raises(CommitFailedException):  # not replayed onto the other run's rows
        stale.overwrite(stale.scan().to_arrow())
    selection = load_selection(catalog, "ns.top")
    assert selection.rows.num_rows == 5 and selection.info["summary"]["kept"] == 2
