"""Multi-step OPRL: the implicit PRM's reward of every step (its log-ratio against the sampling policy,
summed over the step's tokens; steps split at the separator's tokens), checked against an independent
NumPy computation from plain forward passes, and the step count the PRM's trajectory score divides by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpokit.config import ConfigError, from_dict
from dpokit.io import read_jsonl
from dpokit.online.loop import OnlineLoop
from dpokit.online.oprl import OPRLEngine, StepCountEngine, step_rewards_of, token_steps

from .conftest import online_raw

SEPARATOR = "yes"


def np_step_rewards(prm, old, completion, sep_id, beta):
    """Loop reference: a new step starts after each separator token."""
    sums, step = {}, 0
    for k, token in enumerate(completion[:len(prm)]):
        sums[step] = sums.get(step, 0.0) + beta * (float(prm[k]) - float(old[k]))
        if token == sep_id:
            step += 1
    return [sums.get(s, 0.0) for s in range(max(sums) + 1 if sums else 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_rewards_against_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    completion = [int(t) for t in rng.integers(0, 4, n)]  # token 3 is the separator
    prm, old = rng.normal(size=n), rng.normal(size=n)
    beta = float(rng.uniform(0.01, 1.0))
    steps = token_steps(completion, [3])
    got = step_rewards_of(torch.tensor(prm), torch.tensor(old), steps, beta)
    ref = np_step_rewards(prm, old, completion, 3, beta)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert sum(got) == pytest.approx(beta * float((prm - old).sum()))  # the steps add up to the trajectory's


def test_without_a_separator_every_response_is_one_step():
    assert token_steps([5, 3, 7, 3], None) == [0, 0, 0, 0]
    assert token_steps([5, 3, 7, 3], [3]) == [0, 0, 1, 1]
    got = step_rewards_of(torch.tensor([0.5, -1.0]), torch.tensor([0.0, 0.0]), [0, 0], 2.0)
    assert got == pytest.approx([-1.0])


def _logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    logp = torch.log_softmax(logits[0, :-1], -1)
    targets = ids[0, 1:]
    return logp[torch.arange(len(targets)), targets][len(prompt_ids) - 1:].numpy()


def test_a_multi_step_round_rewards_each_step_as_numpy_does(policy_dir, prompts_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    seen, counts = [], []
    original, original_count = OPRLEngine.loss_inputs, StepCountEngine.loss_inputs

    def spy(self, policy, batch, reference=None):
        inputs = original(self, policy, batch, reference)
        seen.append({"ids": batch.extras["group_id"].tolist(),
                     **{k: inputs.extras[k].clone() for k in ("step_rewards", "step_mask", "token_step")}})
        return inputs

    def spy_count(self, policy, batch, reference=None):
        inputs = original_count(self, policy, batch, reference)
        counts.append((batch.extras["group_id"].tolist(), inputs.extras["list_num_steps"].clone()))
        return inputs

    monkeypatch.setattr(OPRLEngine, "loss_inputs", spy)
    monkeypatch.setattr(StepCountEngine, "loss_inputs", spy_count)
    raw = online_raw(policy_dir, tmp_path / "run", "oprl", rounds=1, prompts_per_round=6, samples_per_prompt=4,
                     prompts=prompts_file, max_new_tokens=8, options={"prm_beta": 0.5, "step_separator": SEPARATOR})
    raw["loss"] = {"name": "oprl"}
    raw["train"].update(lr=5e-2, batch_size=6)
    loop = OnlineLoop(from_dict(raw))
    sep_id = loop.tokenizer.convert_tokens_to_ids(SEPARATOR)
    result = loop.run()
    assert result["status"] == "completed" and result["metrics"][0]["prm/steps_per_response"] > 1.0
    rows = {int(row["group_id"]): row for row in read_jsonl(str(tmp_path / "run" / "rounds" / "round-000" / "train.jsonl"))}
    old_model = AutoModelForCausalLM.from_pretrained(policy_dir).double().eval()
    prm_model = AutoModelForCausalLM.from_pretrained(policy_dir).double().eval()
    prm_weights = load_file(str(tmp_path / "run" / "rounds" / "round-000" / "prm.safetensors"))
    prm_model.load_state_dict({**prm_model.state_dict(), **{k: v.double() for k, v in prm_weights.items()}})
    first = seen[0]  # the first optimizer step's batch
    multi = 0
    for b, gid in enumerate(int(i) for i in first["ids"]):
        row = rows[gid]
        for g, completion in enumerate(row["response_ids"]):
            prm = _logps(prm_model, row["prompt_ids"], completion)
            old = _logps(old_model, row["prompt_ids"], completion)
            ref = np_step_rewards(prm, old, completion, sep_id, 0.5)
            n = len(ref)
            multi += n > 1
            np.testing.assert_allclose(first["step_rewards"][b, g, :n].numpy(), ref, rtol=1e-4, atol=1e-5)
            assert first["step_mask"][b, g, :n].tolist() == [1.0] * n
            assert float(first["step_mask"][b, g, n:].abs().sum()) == 0.0
            expected_steps = [float(s) for s in token_steps(completion, [sep_id])]
            assert first["token_step"][b, g, :len(completion)].tolist() == expected_steps
            assert set(first["token_step"][b, g, len(completion):].tolist()) <= {-1.0}
    assert multi > 0, "some response has more than one step"
    # the PRM's trajectory score divides by each response's steps
    ids, steps = counts[0]
    for b, gid in enumerate(int(i) for i in ids):
        for g, completion in enumerate(rows[gid]["response_ids"]):
            assert float(steps[b, g]) == completion.count(sep_id) + (0 if completion[-1] == sep_id else 1)


def test_an_unknown_separator_is_named(policy_dir, prompts_file, tmp_path):
    raw = online_raw(policy_dir, tmp_path / "run", "oprl", rounds=1, prompts=prompts_file, samples_per_prompt=4,
                     options={"step_separator": "@@"})
    raw["loss"] = {"name": "oprl"}
    with pytest.raises(ConfigError, match="online.options.step_separator"):
        OnlineLoop(from_dict(raw)).run()
