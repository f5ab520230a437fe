"""The class axis split over training workers (Partial FC with sample rate 1).

Each of W workers owns the centres of classes [r * C // W, (r + 1) * C // W). The embeddings,
qualities and labels of the global batch are all-gathered with autograd, every worker computes
the loss of the whole batch against its own centres, and `AllReduceClasses` combines the class
reductions (docs/architecture.md). The loss is then the same on every worker, so each one
backpropagates 1/W of it and every collective sums gradients: the all-gather's backward, the
all-reduce's and DDP's, through `sum_gradients`. Every parameter receives exactly the gradient
of the global-batch loss, as one worker holding all classes would compute it.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from models.losses import ClassReduce, FIQALoss


class AllReduceClasses(ClassReduce):
    """Combines the class reductions of all workers: sums with gradient, maxima without."""

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x.detach(), "max", dist.group.WORLD)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x, "sum", dist.group.WORLD)


def sum_gradients(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: sum a gradient bucket over workers instead of averaging it,
    since each worker's gradient is already its share of the global-batch loss. (DDP checks
    these annotations, so this module does not postpone their evaluation.)"""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


@dataclass(frozen=True)
class ClassShard:
    """The contiguous slice of `num_classes` that worker `rank` of `world` owns."""

    num_classes: int
    rank: int = 0
    world: int = 1

    @property
    def offset(self) -> int:
        return self.rank * self.num_classes // self.world

    @property
    def count(self) -> int:
        return (self.rank + 1) * self.num_classes // self.world - self.offset

    def loss(self, embed_dim: int, **kwargs) -> FIQALoss:
        """The FIQA loss over all classes with this worker's centres only."""
        reduce = AllReduceClasses() if self.world > 1 else ClassReduce()
        return FIQALoss(
            embed_dim,
            self.num_classes,
            offset=self.offset,
            num_local=self.count,
            reduce=reduce,
            **kwargs,
        )

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every worker's rows of each tensor, in rank order, with gradient. Workers may hold
        different numbers of rows (decode failures are dropped before the model)."""
        if self.world == 1:
            return tensors
        rows = torch.tensor([len(tensors[0])], device=tensors[0].device)
        counts = funcol.all_gather_single(rows, 0, dist.group.WORLD).tolist()
        longest = max(counts)
        gathered = []
        for x in tensors:
            padded = torch.cat([x, x.new_zeros(longest - len(x), *x.shape[1:])])
            parts = funcol.all_gather_single(padded, 0, dist.group.WORLD).split(longest)
            gathered.append(torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]))
        return tuple(gathered)

    def clip_grad_norm_(self, replicated, sharded, max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` over the parameters of all workers together: the
        replicated ones (equal on every worker after DDP) counted once, the class-sharded ones
        summed over workers. Returns the total norm before clipping."""
        replicated = [p for p in replicated if p.grad is not None]
        sharded = [p for p in sharded if p.grad is not None]
        squared = get_total_norm([p.grad for p in sharded]) ** 2
        if self.world > 1:
            squared = funcol.all_reduce(squared, "sum", dist.group.WORLD)
        total = (get_total_norm([p.grad for p in replicated]) ** 2 + squared).sqrt()
        clip_grads_with_norm_(replicated + sharded, max_norm, total)
        return total

    def owners(self, world: int) -> list[int]:
        """Ranks of a `world`-worker split whose slices overlap this one."""
        split = [ClassShard(self.num_classes, r, world) for r in range(world)]
        end = self.offset + self.count
        return [s.rank for s in split if s.offset < end and self.offset < s.offset + s.count]

    def load(self, slices: list[dict], criterion: FIQALoss, optimizer: torch.optim.Optimizer):
        """Sets this shard's centres and their AdamW state from saved slices (`slice_state`)
        of any worker count, in class order: rows are copied, so re-slicing is exact."""
        start, end = self.offset, self.offset + self.count

        def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(
                [
                    t[max(start - s["offset"], 0) : end - s["offset"]]
                    for s, t in zip(slices, tensors, strict=True)
                ]
            )

        with torch.no_grad():
            criterion.centres.weight.copy_(rows([s["weight"] for s in slices]))
        saved = [s["optimizer"]["state"][0] for s in slices]
        state = {  # AdamW's moments have a row per class; its step count is shared
            name: rows([m[name] for m in saved]) if value.ndim else value
            for name, value in saved[0].items()
        }
        groups = slices[0]["optimizer"]["param_groups"]
        optimizer.load_state_dict({"state": {0: state}, "param_groups": groups})


def slice_state(criterion: FIQALoss, optimizer: torch.optim.Optimizer) -> dict:
    """This worker's centres and their optimiser state, as a checkpoint holds them."""
    return {
        "offset": criterion.centres.offset,
        "weight": criterion.centres.weight.detach(),
        "optimizer": optimizer.state_dict(),
    }
