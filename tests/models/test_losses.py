import math
import threading

import pytest
import torch
import torch.nn.functional as F

from models.losses import INIT_BLOCK, ClassReduce, FIQALoss, MarginPenalty, initial_centres

# Three unit class centres on a circle and two embeddings, so every cosine is known by hand.
CENTRES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
EMBEDDINGS = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)], [0.0, 3.0]])
LABELS = torch.tensor([0, 2])


def loss_with_centres(**kwargs) -> FIQALoss:
    loss = FIQALoss(2, 3, **kwargs)
    with torch.no_grad():
        loss.centres.weight.copy_(CENTRES)
    return loss


def test_certainty_ratio_hand_computed():
    parts = loss_with_centres()(EMBEDDINGS, torch.zeros(2), LABELS)
    # Row 0: CCS = cos 30 deg, NNCCS = cos 60 deg. Row 1: CCS = 0, NNCCS = 1.
    expected = torch.tensor([math.sqrt(3) / 2 / (0.5 + 1 + 1e-9), 0.0])
    torch.testing.assert_close(parts.cr, expected)


def test_cosface_cross_entropy_hand_computed():
    parts = loss_with_centres(margin="cosface")(EMBEDDINGS[:1], torch.zeros(1), LABELS[:1])
    c = math.sqrt(3) / 2
    logits = [64 * (c - 0.4), 64 * 0.5, 64 * -c]
    expected = math.log(sum(math.exp(z - 32) for z in logits)) + 32 - logits[0]
    assert parts.ce.item() == pytest.approx(expected, rel=1e-5)


def test_arcface_adds_the_angle_margin():
    margin = MarginPenalty("arcface")
    assert (margin.s, margin.m) == (64.0, 0.5)
    c = torch.tensor([math.sqrt(3) / 2])
    expected = 64 * math.cos(math.pi / 6 + 0.5)
    assert margin.target_logit(c).item() == pytest.approx(expected, rel=1e-5)


def test_arcface_stays_monotone_past_pi_minus_m():
    margin = MarginPenalty("arcface")
    cos = torch.linspace(-1, 1, 2001)
    logit = margin.target_logit(cos)
    assert (logit[1:] >= logit[:-1]).all()
    assert margin.target_logit(torch.tensor([-0.95])).item() == pytest.approx(
        64 * (-0.95 - math.sin(math.pi - 0.5) * 0.5), rel=1e-5
    )


def test_cosface_defaults_and_margin_matches_cross_entropy_on_margined_logits():
    margin = MarginPenalty()
    assert (margin.kind, margin.s, margin.m) == ("cosface", 64.0, 0.4)
    torch.manual_seed(0)
    loss = FIQALoss(8, 5)
    emb, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    parts = loss(emb, torch.zeros(6), labels)
    cos = loss.centres.cosine(emb)
    margined = 64 * (cos - 0.4 * F.one_hot(labels, 5))
    torch.testing.assert_close(parts.ce, F.cross_entropy(margined, labels))


def test_no_gradient_flows_through_the_cr_target():
    torch.manual_seed(0)
    loss = FIQALoss(8, 5)
    emb = torch.randn(6, 8, requires_grad=True)
    quality = torch.randn(6, requires_grad=True)
    parts = loss(emb, quality, torch.randint(0, 5, (6,)))
    assert not parts.cr.requires_grad
    grad_emb, grad_q = torch.autograd.grad(parts.quality, [emb, quality], allow_unused=True)
    assert grad_emb is None or torch.count_nonzero(grad_emb) == 0
    assert torch.count_nonzero(grad_q) > 0


def test_quality_term_is_alpha_times_smooth_l1_with_beta_half():
    torch.manual_seed(0)
    loss = FIQALoss(8, 5, alpha=10.0)
    quality = torch.randn(6)
    parts = loss(torch.randn(6, 8), quality, torch.randint(0, 5, (6,)))
    expected = 10.0 * F.smooth_l1_loss(quality, parts.cr, beta=0.5)
    torch.testing.assert_close(parts.quality, expected)
    torch.testing.assert_close(parts.total, parts.ce + parts.quality)
    assert set(parts.scalars()) == {"loss", "ce", "quality_loss", "cr_mean", "cr_std", "accuracy"}


def test_accuracy_counts_margin_free_top1():
    parts = loss_with_centres()(EMBEDDINGS, torch.zeros(2), LABELS)
    assert parts.accuracy.item() == 0.5  # row 0 is nearest its class, row 1 is not


class ThreadReduce(ClassReduce):
    """Combines the shards' partial results across threads, as an all-reduce would."""

    def __init__(self, shards: int):
        self.barrier = threading.Barrier(shards)
        self.slots: list = [None] * shards
        self.rank = threading.local()

    def _combine(self, x, op):
        rank = self.rank.value
        self.barrier.wait()
        self.slots[rank] = x
        self.barrier.wait()
        out = op(torch.stack(self.slots))
        self.barrier.wait()
        return out

    def max(self, x):
        return self._combine(x, lambda s: s.max(dim=0).values)

    def sum(self, x):
        return self._combine(x, lambda s: s.sum(dim=0))


@pytest.mark.parametrize("margin", ["cosface", "arcface"])
def test_class_sharded_loss_equals_the_single_shard_loss(margin):
    torch.manual_seed(0)
    classes, dim = 10, 8
    full = FIQALoss(dim, classes, margin=margin)
    emb, quality = torch.randn(16, dim), torch.randn(16)
    labels = torch.randint(0, classes, (16,))
    expected = full(emb, quality, labels)

    reduce = ThreadReduce(2)
    bounds = [(0, 4), (4, 6)]  # uneven shards on purpose
    results = [None, None]

    def run(rank):
        reduce.rank.value = rank
        offset, count = bounds[rank]
        shard = FIQALoss(dim, classes, margin=margin, offset=offset, num_local=count, reduce=reduce)
        with torch.no_grad():
            shard.centres.weight.copy_(full.centres.weight[offset : offset + count])
        results[rank] = shard(emb, quality, labels)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for got in results:
        torch.testing.assert_close(got.total, expected.total)
        torch.testing.assert_close(got.cr, expected.cr)
        torch.testing.assert_close(got.accuracy, expected.accuracy)


def test_a_class_starts_from_the_same_centre_however_the_classes_are_split():
    whole = initial_centres(0, 3 * INIT_BLOCK, 8, seed=0)
    assert whole.shape == (3 * INIT_BLOCK, 8)
    assert whole.std().item() == pytest.approx(0.01, rel=0.02)
    for offset, count in [(0, 1), (INIT_BLOCK - 5, 10), (100, 2 * INIT_BLOCK + 3)]:
        part = initial_centres(offset, count, 8, seed=0)
        torch.testing.assert_close(part, whole[offset : offset + count], rtol=0, atol=0)
    assert not torch.equal(initial_centres(0, 4, 8, seed=1), whole[:4])
    shard = FIQALoss(8, 3 * INIT_BLOCK, offset=INIT_BLOCK, num_local=7, seed=0).centres
    torch.testing.assert_close(shard.weight.detach(), whole[INIT_BLOCK : INIT_BLOCK + 7])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="margin must be one of"):
        MarginPenalty("sphereface")
    with pytest.raises(ValueError, match="not inside"):
        FIQALoss(8, 10, offset=8, num_local=4)
