"""Group round strategies (grpo, rloo, reinforce, copo): a round runs, the sampling policy's log-probs are
the policy's at sampling time (ratio 1 on the first step, not after), and the config errors."""

from __future__ import annotations

import pytest
import torch

from dpokit.config import ConfigError, from_dict
from dpokit.io import read_jsonl
from dpokit.online import groups as groups_module
from dpokit.online.loop import OnlineLoop
from dpokit.preflight import checked_config

from .conftest import online_raw

GROUP_LOSS = {"grpo": {"name": "grpo", "beta": 0.04}, "rloo": {"name": "rloo"},
              "reinforce": {"name": "reinforce"}, "copo": {"name": "copo"}}


def group_loop(policy_dir, tmp_path, prompts_file, strategy, loss=None, train=None, **online):
    settings = dict(rounds=1, prompts_per_round=4, samples_per_prompt=3, prompts=prompts_file)
    settings.update(online)
    raw = online_raw(policy_dir, tmp_path / "run", strategy, **settings)
    raw["loss"] = dict(loss or GROUP_LOSS[strategy])
    raw["train"].update(train or {})
    return OnlineLoop(from_dict(raw))


def round_file(tmp_path, name, r=0):
    return read_jsonl(str(tmp_path / "run" / "rounds" / f"round-{r:03d}" / name))


@pytest.mark.parametrize("strategy", sorted(GROUP_LOSS))
def test_a_round_of_each_group_strategy_trains_on_whole_groups(policy_dir, prompts_file, tmp_path, strategy):
    loop = group_loop(policy_dir, tmp_path, prompts_file, strategy)
    result = loop.run()
    assert result["status"] == "completed"
    rows = round_file(tmp_path, "train.jsonl")
    samples = {row["index"]: row for row in round_file(tmp_path, "samples.jsonl")}
    assert len(rows) == 4
    for row in rows:  # every non-empty sample of the prompt, ties and duplicates kept, with its ids
        sampled = samples[int(row["group_id"])]
        kept = [k for k, t in enumerate(sampled["responses"]) if t.strip()]
        assert row["responses"] == [sampled["responses"][k] for k in kept]
        assert row["response_ids"] == [sampled["completion_ids"][k] for k in kept]
        assert row["prompt_ids"] == sampled["prompt_ids"]
    metrics = result["metrics"][0]
    assert metrics["trained"] and metrics["groups"] == 4
    assert 0.0 <= metrics["groups/all_equal"] <= 1.0 and 0.0 <= metrics["groups/vanishing"] <= 1.0
    assert "train/zero_groups_mean" in metrics
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def _independent_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    logp = torch.log_softmax(logits[0, :-1], -1)
    targets = ids[0, 1:]
    return logp[torch.arange(len(targets)), targets][len(prompt_ids) - 1:]


def test_old_logps_are_the_sampling_policys_and_the_ratio_moves_after_the_first_step(
        policy_dir, prompts_file, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = groups_module.GroupEngine.loss_inputs

    def spy(self, policy, batch, reference=None):
        inputs = original(self, policy, batch, reference)
        mask = inputs.list_token_mask & inputs.list_mask.unsqueeze(-1)
        seen.append(((inputs.list_policy_token_logps.detach() - inputs.extras["list_old_token_logps"]) * mask,
                     inputs.extras["list_old_logps"] - inputs.list_policy_logps.detach()))
        return inputs

    monkeypatch.setattr(groups_module.GroupEngine, "loss_inputs", spy)
    # 8 groups, batch 4, 2 epochs: 4 optimizer steps in one round, high lr so the policy moves
    loop = group_loop(policy_dir, tmp_path, prompts_file, "grpo", loss={"name": "grpo", "beta": 0.0},
                      train={"lr": 5e-2, "epochs": 2}, prompts_per_round=8, samples_per_prompt=4)
    engine_holder = {}
    prepare = loop.strategy.prepare_trainer

    def keep(trainer):
        prepare(trainer)
        engine_holder["old"] = {k: [v.clone() for v in rows] for k, rows in loop.strategy.engine.old.items()}

    loop.strategy.prepare_trainer = keep
    loop.run()
    assert len(seen) == 4
    first_token, first_seq = seen[0]
    assert float(first_token.abs().max()) < 1e-5 and float(first_seq.abs().max()) < 1e-4  # ratio 1 at step 1
    assert float(seen[-1][0].abs().max()) > 1e-3  # the policy moved: the ratio is no longer 1
    # the recorded values equal the starting model's log-probs of the sampled tokens, computed directly
    start = AutoModelForCausalLM.from_pretrained(policy_dir, torch_dtype=torch.float32)
    rows = round_file(tmp_path, "train.jsonl")
    assert len(engine_holder["old"]) == len(rows) == 8
    for row in rows:
        old = engine_holder["old"][int(row["group_id"])]
        assert len(old) == len(row["response_ids"])
        for values, completion in zip(old, row["response_ids"]):
            expected = _independent_logps(start, row["prompt_ids"], completion)
            assert values.shape == expected.shape
            assert torch.allclose(values.double(), expected, atol=1e-5)


def test_copo_round_reads_extracted_answers(policy_dir, prompts_file, tmp_path):
    spec = f"{__name__}:first_word"
    loop = group_loop(policy_dir, tmp_path, prompts_file, "copo", options={"answer": spec})
    result = loop.run()
    info = round_file(tmp_path, "pairs.jsonl")
    assert info and all(row["answers"] == [first_word(None, t) for t in row["responses"]] for row in info)
    assert "groups/distinct_answers" in result["metrics"][0]


def first_word(prompt, response):
    return response.split()[0] if response.split() else ""


def test_group_and_pairwise_strategies_refuse_each_others_losses(policy_dir, tmp_path):
    def raw(strategy, loss, **online):
        r = online_raw(policy_dir, tmp_path / "run", strategy, prompts="p.jsonl", **online)
        r["loss"] = loss
        return r

    with pytest.raises(ConfigError, match="group strategy.*not loss 'dpo' \\(pairwise\\)"):
        checked_config(raw("grpo", {"name": "dpo", "beta": 0.1}))
    with pytest.raises(ConfigError, match="group strategy.*trains loss 'grpo'.*not loss 'rloo'"):
        checked_config(raw("grpo", {"name": "rloo"}))
    with pytest.raises(ConfigError, match="loss 'grpo' is a policy-gradient loss.*online_dpo.*grpo"):
        lists = raw("online_dpo", {"name": "grpo"})
        lists["data"]["kind"] = "lists"  # past the data-kind check: the strategy is what is wrong
        checked_config(lists)
    with pytest.raises(ConfigError, match="online.options.answer"):
        checked_config(raw("copo", {"name": "copo"}, options={"answer": "no_such_module:f"}))
    with pytest.raises(ConfigError, match="online.options"):
        checked_config(raw("grpo", {"name": "grpo"}, options={"alpha": 1}))
    checked_config(raw("grpo", {"name": "grpo"}))  # no data.kind needed: the rounds write the lists
    checked_config(raw("grpo", {"name": "grpo", "beta": 0.0}))  # beta weighs the KL term: 0 is no KL
    with pytest.raises(ConfigError, match="grpo.beta: must be >= 0"):
        checked_config(raw("grpo", {"name": "grpo", "beta": -0.1}))


def test_an_oprl_round_updates_the_prm_and_trains_on_its_step_rewards(policy_dir, prompts_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from dpokit.online.oprl import OPRLEngine

    seen = []
    original = OPRLEngine.loss_inputs

    def spy(self, policy, batch, reference=None):
        inputs = original(self, policy, batch, reference)
        seen.append({k: inputs.extras[k].clone() for k in ("step_rewards", "step_mask", "token_step")})
        return inputs

    monkeypatch.setattr(OPRLEngine, "loss_inputs", spy)
    loop = group_loop(policy_dir, tmp_path, prompts_file, "oprl", loss={"name": "oprl"}, train={"lr": 5e-2},
                      samples_per_prompt=4, options={"prm_beta": 0.5})
    start = {k: v.detach().clone() for k, v in loop.policy.named_parameters()}
    result = loop.run()
    metrics = result["metrics"][0]
    assert metrics["trained"] and "prm/pair_accuracy" in metrics
    prm = load_file(str(tmp_path / "run" / "rounds" / "round-000" / "prm.safetensors"))
    assert max(float((prm[k] - start[k]).abs().max()) for k in start) > 1e-4  # gradients reached the PRM
    step = seen[0]
    assert float(step["step_rewards"].abs().max()) > 0  # the updated PRM scores the answers differently
    assert step["step_rewards"].shape == step["step_mask"].shape and step["step_rewards"].shape[-1] == 1
    assert set(step["token_step"].unique().tolist()) <= {-1.0, 0.0}
