import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from models.vit_fiqa import create_model
from pipeline.class_shard import ClassShard, slice_state, sum_gradients
from pipeline.training.loop import parameter_groups, train_step

CLASSES, BATCH, CLIP = 1000, 16, 1.0
ROWS = (slice(0, 9), slice(9, 16))  # uneven on purpose: workers drop unreadable images


def test_slices_are_contiguous_and_cover_every_class():
    for classes, world in [(1000, 2), (10, 3), (7, 7), (85_742, 8)]:
        shards = [ClassShard(classes, r, world) for r in range(world)]
        assert shards[0].offset == 0
        for a, b in itertools.pairwise(shards):
            assert b.offset == a.offset + a.count
        assert shards[-1].offset + shards[-1].count == classes
        assert max(s.count for s in shards) - min(s.count for s in shards) <= 1
    assert [ClassShard(1000, r, 2).count for r in range(2)] == [500, 500]
    assert ClassShard(10, 1, 2).owners(3) == [1, 2]  # [5, 10) against [0, 3) [3, 6) [6, 10)
    assert ClassShard(10, 0, 1).owners(3) == [0, 1, 2]


def head_bytes(classes: int, dim: int, world: int) -> int:
    """Parameter and AdamW state bytes of worker 0's margin head, after one step."""
    criterion = ClassShard(classes, 0, world).loss(dim)
    optimizer = torch.optim.AdamW(criterion.parameters())
    criterion.centres.weight.grad = torch.ones_like(criterion.centres.weight)
    optimizer.step()
    tensors = [*criterion.parameters(), *optimizer.state[criterion.centres.weight].values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_head_parameter_and_optimiser_bytes_fall_as_one_over_the_workers():
    classes, dim = 16_384, 512
    whole = head_bytes(classes, dim, 1)
    assert whole >= 3 * classes * dim * 4  # centres, AdamW's two moments
    for world in (2, 4, 8):
        # AdamW's step counter (a scalar) is the only state that does not shrink.
        assert head_bytes(classes, dim, world) == pytest.approx(whole / world, rel=1e-5)


def test_centres_and_their_moments_are_resliced_exactly_for_any_worker_count():
    classes, dim, saved_world = 10, 4, 3
    saved = []
    for rank in range(saved_world):
        criterion = ClassShard(classes, rank, saved_world).loss(dim, seed=1)
        optimizer = torch.optim.AdamW(criterion.parameters())
        for _ in range(2):
            criterion.centres.weight.grad = torch.randn_like(criterion.centres.weight)
            optimizer.step()
        saved.append(slice_state(criterion, optimizer))
    weight = torch.cat([s["weight"] for s in saved])
    moments = {
        name: torch.cat([s["optimizer"]["state"][0][name] for s in saved])
        for name in ("exp_avg", "exp_avg_sq")
    }
    for world in (1, 2, 3, 4):
        for rank in range(world):
            shard = ClassShard(classes, rank, world)
            criterion = shard.loss(dim, seed=2)
            optimizer = torch.optim.AdamW(criterion.parameters())
            shard.load([saved[r] for r in shard.owners(saved_world)], criterion, optimizer)
            rows = slice(shard.offset, shard.offset + shard.count)
            centres = criterion.centres.weight
            torch.testing.assert_close(centres.detach(), weight[rows], rtol=0, atol=0)
            state = optimizer.state[centres]
            for name, full in moments.items():
                torch.testing.assert_close(state[name], full[rows], rtol=0, atol=0)
            assert state["step"].item() == 2


def inputs():
    """The same network and global batch in every process. Eval mode: batch-norm statistics
    and token masking are per worker in any DDP run; what sharding must leave unchanged is
    everything after each image's forward pass (mask_token is unused without masking)."""
    torch.manual_seed(0)
    model = create_model("vit-fiqa-micro").eval()
    model.mask_token.requires_grad_(False)
    x = torch.randn(BATCH, 3, 112, 112)
    labels = torch.randint(0, CLASSES, (BATCH,))
    return model, x, labels


def step(shard: ClassShard, model, forward, x, labels) -> dict:
    criterion = shard.loss(model.config.fr_dim, alpha=300.0)
    optimizers = (
        torch.optim.AdamW(parameter_groups(model, 0.05)),
        torch.optim.AdamW(criterion.parameters(), weight_decay=0.05),
    )
    parts, grad_norm = train_step(forward, criterion, shard, optimizers, x, labels, CLIP)
    return {
        "centres": criterion.centres.num_local,
        "loss": parts.total.detach(),
        "ce": parts.ce.detach(),
        "cr": parts.cr,
        "accuracy": parts.accuracy,
        "grad_norm": grad_norm,
        "grads": {n: p.grad for n, p in model.named_parameters() if p.requires_grad},
        "centre_grad": criterion.centres.weight.grad,
    }


def sharded_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, x, labels = inputs()
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(None, sum_gradients)
    rows = ROWS[rank]
    result = step(ClassShard(CLASSES, rank, 2), model, ddp, x[rows], labels[rows])
    torch.save(result, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_two_class_sharded_workers_equal_one_worker_on_the_same_global_batch(tmp_path):
    model, x, labels = inputs()
    assert (labels < 500).any() and (labels >= 500).any()  # true classes on both workers
    whole = step(ClassShard(CLASSES), model, model, x, labels)
    assert whole["grad_norm"] > CLIP  # so clipping, over all workers' gradients, is exercised

    mp.spawn(sharded_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["centres"] == 500
        for name in ("loss", "ce", "cr", "accuracy", "grad_norm"):
            torch.testing.assert_close(got[name], whole[name], msg=name)
        # The gradients the optimisers apply (clipped by the same global norm).
        assert got["grads"].keys() == whole["grads"].keys()
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, whole["grads"][name], msg=name)
        rows = slice(500 * rank, 500 * (rank + 1))
        torch.testing.assert_close(got["centre_grad"], whole["centre_grad"][rows])
