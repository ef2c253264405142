"""Worker (under torchrun, gloo on CPU) for test_dist_helpers: dpokit.distributed on two processes.

usage: _helpers_worker.py MODEL_DIR CACHE_DIR
"""

import os
import sys

import torch
import torch.distributed as dist


def check_split_and_gather():
    from dpokit import distributed as d

    assert d.is_distributed() and d.world_size() == 2
    items = [f"prompt-{i}" for i in range(7)]
    local = d.shard_for_rank(items)
    assert len(local) == (3 if d.rank() == 0 else 4)
    assert d.gather_objects(local) == items  # rank order restores the original order
    assert d.broadcast_object({"rank": d.rank()}) == {"rank": 0}

    def sample(local_items, indices):  # a "generation": randomness from (seed, item index) only
        return [(item, torch.randint(0, 10**6, (3,), generator=d.item_generator(11, i)).tolist())
                for item, i in zip(local_items, indices)]

    expected = [(item, torch.randint(0, 10**6, (3,), generator=d.item_generator(11, i)).tolist())
                for i, item in enumerate(items)]
    assert d.map_sharded(sample, items) == expected

    # a key only one process has still reduces; weights are per key
    if d.rank() == 0:
        sums, weights = {"a": 1.0 * 2, "b": 5.0}, {"a": 2.0, "b": 1.0}
    else:
        sums, weights = {"a": 4.0 * 1}, {"a": 1.0}
    assert d.reduce_weighted(sums, weights) == {"a": 2.0, "b": 5.0}
    assert d.all_reduce_sum([1.0, d.rank()]) == [2.0, 1.0]


def check_ddp_forward_through(model_dir):
    """A DDP policy: the engine's computation runs as DDP's forward, so DDP averages the gradients
    (each process computes half of the groups; the result is the whole batch's gradient)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from transformers import AutoModelForCausalLM

    from dpokit.scoring.lm.engine import LogProbEngine
    from dpokit.losses import Needs

    g = torch.Generator().manual_seed(1)
    ids = lambda n: [int(x) for x in torch.randint(3, 250, (n,), generator=g)]
    groups = [(ids(4 + i), [ids(3), ids(1 + i)]) for i in range(4)]
    engine = LogProbEngine(Needs(), 0)
    full = AutoModelForCausalLM.from_pretrained(model_dir)
    (engine.token_logprobs(full, groups).sums.sum() / 4).backward()
    rank = dist.get_rank()
    policy = DDP(AutoModelForCausalLM.from_pretrained(model_dir))
    (engine.token_logprobs(policy, groups[2 * rank:2 * rank + 2]).sums.sum() * 2 / 4).backward()
    grads = dict(policy.module.named_parameters())
    for name, param in full.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, atol=1e-6, rtol=1e-5, msg=name)


def check_reference_cache(model_dir, cache_dir):
    from transformers import AutoModelForCausalLM

    from dpokit import distributed as d
    from dpokit.data.tokenize import TokenizedExample
    from dpokit.scoring.lm.engine import LogProbEngine
    from dpokit.losses import Needs
    from dpokit.reference import CachedReference, ModelReference

    g = torch.Generator().manual_seed(2)
    ids = lambda n: [int(x) for x in torch.randint(3, 250, (n,), generator=g)]
    examples = [TokenizedExample(index=10 + i, prompt_ids=ids(3 + i % 4), completions=[ids(2 + i % 3), ids(3)])
                for i in range(7)]
    engine = LogProbEngine(Needs(), 0)
    reference = ModelReference(AutoModelForCausalLM.from_pretrained(model_dir))
    # 7 examples, batches of 3: 2 forwards per process, one of them on an empty share (rank 0)
    built = CachedReference.build(reference, engine, examples, cache_dir, 3)
    assert not built.hit and sorted(built.store) == [ex.index for ex in examples]
    single = CachedReference.build(reference, engine, examples, os.path.join(cache_dir, f"single-{d.rank()}"), 2,
                                   shard=False)
    for ex in examples:
        for a, b in zip(built.store[ex.index], single.store[ex.index]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    d.barrier()
    again = CachedReference.build(reference, engine, examples, cache_dir, 3)
    assert again.hit and again.path == built.path
    assert [n for n in os.listdir(cache_dir) if n.startswith("reference-")] == [os.path.basename(built.path)]


if __name__ == "__main__":
    model_dir, cache_dir = sys.argv[1:3]
    dist.init_process_group("gloo")
    try:
        check_split_and_gather()
        check_ddp_forward_through(model_dir)
        check_reference_cache(model_dir, cache_dir)
    finally:
        dist.destroy_process_group()
    print("helpers worker: ok")
