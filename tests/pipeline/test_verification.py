import numpy as np
import pytest
import torch

from pipeline.evaluation.verification import (
    best_threshold_accuracy,
    spearman,
    tar_at_fmr,
    verification,
)


def test_spearman_is_rank_based_and_averages_ties():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # Ties: [1, 2, 2, 3] vs [1, 2, 3, 4] -> ranks (0, 1.5, 1.5, 3) -> r = 0.9487
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(
        0.9486833, abs=1e-6
    )
    assert np.isnan(spearman(np.ones(5), x[:5]))


def test_best_threshold_separates_separable_scores():
    accuracy, threshold = best_threshold_accuracy(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2]))
    assert accuracy == 1.0 and 0.2 <= threshold < 0.7
    accuracy, _ = best_threshold_accuracy(np.array([0.5, 0.1]), np.array([0.3, 0.2]))
    assert accuracy == 0.75


def test_tar_at_fmr_uses_the_impostor_tail():
    impostor = np.linspace(0, 1, 2000)  # 0.1% of 2000 = 2 impostors may pass
    genuine = np.array([0.9985, 0.9995, 1.5])
    assert tar_at_fmr(genuine, impostor, 1e-3) == pytest.approx(2 / 3)


def test_verification_of_perfect_embeddings():
    identities = np.repeat(np.arange(5), 4)
    embeddings = torch.eye(5)[identities] + 0.01 * torch.randn(20, 5)
    result = verification(embeddings, identities)
    assert result["verification_accuracy"] == 1.0 and result["tar_at_fmr"] == 1.0
    assert result["genuine_pairs"] == 5 * 6
