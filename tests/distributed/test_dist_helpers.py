"""dpokit.distributed: the helpers on one process (no group: they return their input) and on two
gloo processes (splitting, gathering, per-item seeds, reductions, forwards through DDP, the
reference-log-prob cache computed in shares)."""

import os

import pytest
import torch

from dpokit import distributed as d

from _launch import HERE, gloo_available, torchrun


def test_shard_bounds_cover_the_items_in_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [d.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1
    assert [d.shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]  # W * b: exactly [r*b, (r+1)*b)


def test_single_process_helpers_return_their_input():
    assert not d.is_distributed() and d.world_size() == 1 and d.rank() == 0 and d.is_main_process()
    assert d.shard_for_rank([1, 2, 3]) == [1, 2, 3] and d.gather_objects((1, 2)) == [1, 2]
    assert d.broadcast_object("x") == "x"
    assert d.reduce_weighted({"a": 3.0, "z": 1.0}, {"a": 2.0, "z": 0.0}) == {"a": 1.5}
    assert d.map_sharded(lambda items, idx: [i * 10 for i in idx], "abc") == [0, 10, 20]
    model = torch.nn.Linear(2, 2)
    assert d.forward_through(model, lambda: "computed") == "computed"


def test_item_seeds_depend_on_seed_and_index_only():
    assert d.item_seed(3, 5) == d.item_seed(3, 5)
    assert len({d.item_seed(3, i) for i in range(100)} | {d.item_seed(4, 0)}) == 101
    a = torch.rand(4, generator=d.item_generator(3, 7))
    assert torch.equal(a, torch.rand(4, generator=d.item_generator(3, 7)))


def test_epoch_plan_global_batches_and_sample_positions():
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    plan = d.epoch_plan(batches, world=2)
    assert plan.batches == batches and plan.starts == [0, 4, 8] and plan.end == 11
    assert plan.samples_before(2) == 8 and plan.samples_before(3) == 11
    tail = d.epoch_plan([[0, 1, 2, 3], [4]], world=2)  # a global batch smaller than the world
    assert tail.batches == [[0, 1, 2, 3]] and tail.dropped == 1 and tail.micro_after(2) == 1
    # continue from sample 6 with global batches of 2 (another world size): the same sample order
    resumed = d.epoch_plan(batches, world=1, start=6, global_batch=2)
    assert resumed.batches == [[6, 7], [8, 9], [10]] and resumed.starts == [6, 8, 10]


@pytest.mark.slow  # two processes
@pytest.mark.skipif(not gloo_available(), reason="needs torch.distributed with gloo")
def test_helpers_on_two_processes(tmp_path, tiny_model_dir):
    out = torchrun([os.path.join(HERE, "_helpers_worker.py"), tiny_model_dir, str(tmp_path / "cache")])
    assert "helpers worker: ok" in out
