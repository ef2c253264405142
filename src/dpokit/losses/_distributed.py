"""Cross-process helpers for batch-coupled losses (AOT, beta-DPO, KTO, BCO).

Every helper is a no-op on one process, and only talks to other processes when
``torch.distributed.is_available() and is_initialized()`` and the world size is above 1.
Batches may differ in size across processes (the last batch of an epoch): sizes are gathered
first and shorter batches padded, then trimmed.

* :func:`gather_detached` gathers statistics that need no gradient (margins, rewards).
* :func:`gather_with_grad` gathers with autograd (the semantics of
  ``torch.distributed.nn.functional.all_gather``) so the gradient of a loss computed on the global
  batch flows back to every process's own examples (AOT sorts the global batch).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist

from ..distributed import is_distributed, rank, world_size  # noqa: F401  (rank, world_size: used here and by tests)

Tensor = torch.Tensor


def is_active() -> bool:
    """True with a process group of more than one process (:func:`dpokit.distributed.is_distributed`)."""
    return is_distributed()


def _gather_sizes(t: Tensor) -> List[int]:
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    out = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(out, n)
    return [int(x.item()) for x in out]


def _pad_to(t: Tensor, n: int) -> Tensor:
    if t.shape[0] == n:
        return t.contiguous()
    pad = t.new_zeros((n - t.shape[0],) + tuple(t.shape[1:]))
    return torch.cat([t, pad], dim=0).contiguous()


def gather_detached(t: Tensor) -> Tensor:
    """Concatenate ``t`` (detached) from every process along dim 0, in rank order."""
    return gather_detached_with_offset(t)[0]


def gather_detached_with_offset(t: Tensor) -> Tuple[Tensor, int]:
    """Like :func:`gather_detached`, also returning where this process's rows start."""
    t = t.detach()
    if not is_active():
        return t, 0
    sizes = _gather_sizes(t)
    padded = _pad_to(t, max(sizes))
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded)
    return torch.cat([b[:s] for b, s in zip(buffers, sizes)], dim=0), sum(sizes[: rank()])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient and keeps this process's slice.

    Equivalent to ``torch.distributed.nn.functional.all_gather`` (whose backward is a reduce-scatter),
    written with ``all_reduce`` so it behaves the same on every backend; the gloo path of the torch
    version (all-to-all in backward) was seen to abort processes at exit.
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.rank, ctx.rows = rank(), t.shape[0]
        buffers = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(buffers, t.contiguous())
        return torch.cat(buffers, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows: (ctx.rank + 1) * ctx.rows]


def gather_with_grad(t: Tensor) -> Tuple[Tensor, int]:
    """Concatenate ``t`` from every process with autograd; returns (gathered, offset of ours).

    The gradient of each process's loss with respect to the gathered tensor is summed over processes
    and routed back to the rows each process contributed (every process must run backward).
    """
    if not is_active():
        return t, 0
    sizes = _gather_sizes(t)
    width = max(sizes)
    full = _AllGatherWithGrad.apply(_pad_to(t, width))
    gathered = torch.cat([full[i * width: i * width + s] for i, s in enumerate(sizes)], dim=0)
    return gathered, sum(sizes[: rank()])


def global_sum_and_count(t: Tensor) -> Tuple[Tensor, Tensor]:
    """Detached sum of all elements of ``t`` and their number, over every process."""
    t = t.detach()
    stats = torch.stack([t.sum().to(torch.float64), torch.tensor(float(t.numel()), dtype=torch.float64,
                                                                  device=t.device)])
    if is_active():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats[0], stats[1]


def global_mean(t: Tensor) -> Tensor:
    """Detached mean of all elements of ``t`` over every process (0 when there are none)."""
    total, count = global_sum_and_count(t)
    return (total / count.clamp_min(1)).to(t.dtype)


def broadcast_from_first(t: Tensor) -> Tensor:
    """Give every process rank 0's copy of ``t`` (for random choices that must agree)."""
    if is_active():
        t = t.contiguous()
        dist.broadcast(t, src=0)
    return t


class RunningMean:
    """Mean of every value seen so far (over all processes), checkpointable.

    ``update`` adds a batch of values (detached) to the running sum and count; the mean of an empty
    history is 0. Used for BCO's reward shift ``delta``.
    """

    def __init__(self):
        self.mean = 0.0
        self.count = 0.0

    def update(self, values: Tensor) -> None:
        total, count = global_sum_and_count(values)
        total, count = float(total), float(count)
        if count <= 0:
            return
        new_count = self.count + count
        self.mean = self.mean + (total - self.mean * count) / new_count
        self.count = new_count

    def state_dict(self):
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state) -> None:
        self.mean = float(state["mean"])
        self.count = float(state["count"])
