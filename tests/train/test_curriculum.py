"""The Curry-DPO curriculum through the trainer: stages ordered easy to hard, and each stage's reference
being the previous stage's final policy."""

import pytest
import torch

from dpokit.config import from_dict
from dpokit.train import Trainer

from conftest import lists_config, make_lists, write_jsonl

pytestmark = pytest.mark.slow  # a training run end to end


def test_curriculum_reference_is_the_previous_stage_policy(tiny_model_dir, tmp_path):
    rows = make_lists(16, seed=7, ks=(4,))
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    raw = lists_config(tiny_model_dir, path, tmp_path / "curry",
                       data={"pair_builder": "best_vs_each", "curriculum": {"stages": 3}},
                       reference={"kind": "copy"}, train={"lr": 2e-2, "batch_size": 4})
    snapshots = []

    def record(trainer, step):  # runs before the curriculum callback of the same step
        policy = trainer.accelerator.unwrap_model(trainer.model)
        snapshots.append((step, {k: v.detach().clone() for k, v in policy.state_dict().items()},
                          {k: v.detach().clone() for k, v in trainer.reference.model.state_dict().items()}))

    trainer = Trainer(from_dict(raw), callbacks=[record])
    order = trainer.order
    stages = [order.stage_of[b[0]] for b in order.batches(0)]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}  # easy to hard, never mixed
    for batch in order.batches(0):
        assert len({order.stage_of[i] for i in batch}) == 1
    gaps = [abs(trainer.train_examples[i].extras["rm_margin"]) for b in order.batches(0) for i in b]
    stage_gaps = [[g for g, s in zip(gaps, [order.stage_of[i] for b in order.batches(0) for i in b]) if s == k]
                  for k in range(3)]
    assert min(stage_gaps[0]) >= max(stage_gaps[1]) and min(stage_gaps[1]) >= max(stage_gaps[2])
    initial = {k: v.detach().clone() for k, v in trainer.reference.model.state_dict().items()}
    trainer.fit()
    ends = order.stage_ends(0)
    callback = trainer.callbacks[-1]
    assert callback.updates == ends  # one optimizer step per batch: stage k ends at step ends[k]
    policy_at = {step: policy for step, policy, _ in snapshots}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    for step, policy, reference in snapshots:
        finished = [end for end in ends if end < step]
        if not finished:
            assert same(reference, initial), step
        else:
            assert same(reference, policy_at[finished[-1]]), step
            assert not same(reference, initial)
    final_policy = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert same(dict(trainer.reference.model.state_dict()), final_policy)  # the last stage ended too
