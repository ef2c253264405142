"""Batch-coupled losses across two real processes (gloo on CPU): gathers, AOT's global sort with
gradients, KTO's KL mean, BCO's running mean and beta-DPO's shared selection."""

import os
import tempfile

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from . import _dist_worker


@pytest.mark.slow  # two gloo processes
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_processes():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_dist_worker.run, args=(init_file,), nprocs=2, join=True)


def test_single_process_helpers_are_no_ops():
    import torch

    from dpokit.losses._distributed import gather_detached_with_offset, gather_with_grad, is_active, world_size

    assert not is_active() and world_size() == 1
    t = torch.arange(3.0, requires_grad=True)
    g, off = gather_with_grad(t)
    assert g is t and off == 0
    d, off = gather_detached_with_offset(t)
    assert off == 0 and not d.requires_grad
