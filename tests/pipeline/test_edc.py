"""The EDC algorithms on toy cases computed by hand."""

import numpy as np
import pytest

from pipeline.evaluation.edc import Curve, edc, erc, pair_quality, trapezoid_auc

# Ten genuine comparisons at threshold 0.5: three fail (score <= 0.5).
SCORES = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.9, 0.6, 0.95, 0.85])
FAILS = SCORES <= 0.5


def test_perfect_ordering_discards_the_failures_first():
    quality = np.where(FAILS, 0.0, 1.0) + np.arange(10) / 100  # failures lowest, all distinct
    curve = edc(SCORES, quality, threshold=0.5)
    assert curve.discard.tolist() == pytest.approx([k / 10 for k in range(10)])
    assert curve.fnmr.tolist() == pytest.approx([3 / 10, 2 / 9, 1 / 8] + [0.0] * 7)
    assert curve.starting_error == pytest.approx(0.3)
    # Steps of width 0.1: 0.3 + 2/9 + 1/8, times 0.1; nothing after discard 0.3.
    assert curve.pauc(0.3) == pytest.approx(0.1 * (0.3 + 2 / 9 + 1 / 8))
    assert curve.pauc(0.2) == pytest.approx(0.1 * (0.3 + 2 / 9))
    # A limit inside a step counts that step partially.
    assert curve.pauc(0.25) == pytest.approx(0.1 * (0.3 + 2 / 9) + 0.05 * (1 / 8))


def test_reversed_ordering_keeps_the_failures_to_the_end():
    quality = np.where(FAILS, 1.0, 0.0) + np.arange(10) / 100  # failures highest
    curve = edc(SCORES, quality, threshold=0.5)
    expected = [3 / (10 - k) for k in range(8)] + [1.0, 1.0]
    assert curve.fnmr.tolist() == pytest.approx(expected)
    assert curve.pauc(0.3) == pytest.approx(0.1 * (3 / 10 + 3 / 9 + 3 / 8))
    assert curve.pauc(0.3) > edc(SCORES, -quality, threshold=0.5).pauc(0.3)


def test_ties_are_discarded_together():
    # Groups of equal quality: {0, 1, 2} (two failures), {3, 4}, {5..9}.
    quality = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3], dtype=float)
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9])
    curve = edc(scores, quality, threshold=0.5)
    assert curve.discard.tolist() == pytest.approx([0.0, 0.3, 0.5])
    assert curve.fnmr.tolist() == pytest.approx([3 / 10, 1 / 7, 0.0])
    assert curve.pauc(0.4) == pytest.approx(0.3 * 0.3 + 0.1 * (1 / 7))
    # The order of the samples inside a tie does not matter.
    shuffled = np.random.default_rng(0).permutation(10)
    again = edc(scores[shuffled], quality[shuffled], threshold=0.5)
    assert again.fnmr.tolist() == pytest.approx(curve.fnmr.tolist())


def test_all_equal_qualities_allow_no_discard():
    curve = edc(SCORES, np.full(10, 0.7), threshold=0.5)
    assert curve.discard.tolist() == [0.0] and curve.fnmr.tolist() == pytest.approx([0.3])
    # The single step holds to the limit.
    assert curve.pauc(0.3) == pytest.approx(0.3 * 0.3)


def test_threshold_is_fixed_not_reestimated():
    # At threshold 0.85 seven fail: [1, 1, 1, 0, 1, 1, 0, 1, 0, 1] in quality order. A
    # threshold re-estimated on what remains would change from step to step; this one does not.
    curve = edc(SCORES, np.arange(10, dtype=float), threshold=0.85)
    remaining_fails = [7, 6, 5, 4, 4, 3, 2, 2, 1, 1]
    assert curve.fnmr.tolist() == pytest.approx(
        [f / (10 - k) for k, f in enumerate(remaining_fails)]
    )


def test_pair_quality_is_the_minimum():
    quality = np.array([0.9, 0.1, 0.5])
    assert pair_quality(quality, np.array([0, 0, 1]), np.array([1, 2, 2])).tolist() == [
        0.1,
        0.5,
        0.1,
    ]


def test_thinning_keeps_the_first_point_per_step():
    curve = Curve(np.array([0.0, 0.0004, 0.0011, 0.0019, 0.5]), np.array([0.5, 0.4, 0.3, 0.2, 0.1]))
    thin = curve.thinned(1e-3)
    assert thin.discard.tolist() == [0.0, 0.0011, 0.5]
    assert thin.fnmr.tolist() == [0.5, 0.3, 0.1]


def test_erc_reestimates_the_threshold_on_what_remains():
    # 4 genuine, 4 impostor comparisons; quality sorts them as listed.
    scores = np.array([0.9, 0.2, 0.4, 0.8, 0.3, 0.7, 0.1, 0.6])
    genuine = np.array([False, True, True, False, True, False, False, True])
    quality = np.arange(8, dtype=float)
    curve = erc(scores, quality, genuine, fmr=0.01, fractions=(0.0, 0.25, 0.5))
    # 0.0: impostors {0.9, 0.8, 0.7, 0.1} -> threshold 0.9; all four genuine fail.
    # 0.25 (drop 2): impostors {0.8, 0.7, 0.1} -> 0.8; genuine {0.4, 0.3, 0.6} all fail.
    # 0.5 (drop 4): impostors {0.7, 0.1} -> 0.7; genuine {0.3, 0.6} both fail.
    assert curve.fnmr.tolist() == [1.0, 1.0, 1.0]
    curve = erc(scores, quality, genuine, fmr=0.5, fractions=(0.0, 0.5))
    # 0.0: 4 impostors, 2 may pass -> threshold 0.7; genuine > 0.7: none of {0.2,0.4,0.3,0.6}.
    # 0.5: impostors {0.7, 0.1}, 1 may pass -> threshold 0.1; genuine {0.3, 0.6} pass.
    assert curve.fnmr.tolist() == [1.0, 0.0]
    assert trapezoid_auc(curve) == pytest.approx(0.5 * (1.0 + 0.0) * 0.5)


def test_erc_step_without_genuine_is_undefined():
    scores, genuine = np.array([0.9, 0.1]), np.array([True, False])
    curve = erc(scores, np.array([0.0, 1.0]), genuine, fmr=0.5, fractions=(0.0, 0.5))
    assert curve.fnmr[0] == 0.0 and np.isnan(curve.fnmr[1])


def test_weights_count_comparisons_as_if_repeated():
    rng = np.random.default_rng(3)
    quality = rng.integers(0, 4, size=10).astype(float)  # with ties
    weights = rng.integers(0, 3, size=10)
    weighted = edc(SCORES, quality, 0.5, weights=weights.astype(float))
    repeated = edc(np.repeat(SCORES, weights), np.repeat(quality, weights), 0.5)
    for limit in (0.1, 0.3, 0.7):
        assert weighted.pauc(limit) == pytest.approx(repeated.pauc(limit))
    assert weighted.starting_error == pytest.approx(repeated.starting_error)
