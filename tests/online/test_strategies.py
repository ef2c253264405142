"""Round strategies on a tiny model: which reference each round trains against, APO's extrapolation,
SPPO's win probabilities, and the XPO/DNO/HyPO/OFS-DPO data."""

import json

import pytest

from dpokit.config import ConfigError, from_dict
from dpokit.preflight import checked_config
from dpokit.online.loop import OnlineLoop, read_jsonl

from .conftest import PROMPTS, loop_for, online_raw, round_policy, same_weights

pytestmark = pytest.mark.slow  # online runs end to end: sampling, judging and training rounds


def test_online_dpo_keeps_the_initial_reference_iterative_uses_the_previous_policy(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path / "online", "online_dpo", prompts_file)
    initial = {k: v.detach().clone() for k, v in loop.policy.named_parameters()}
    result = loop.run()
    assert result["status"] == "completed" and len(result["metrics"]) == 2
    assert len(loop.references) == 2
    assert same_weights(loop.references[0], initial) and same_weights(loop.references[1], initial)
    assert not same_weights(round_policy(tmp_path / "online", 0), initial)  # it did train

    loop = loop_for(policy_dir, tmp_path / "iter", "iterative_dpo", prompts_file)
    loop.run()
    after_round_0 = round_policy(tmp_path / "iter", 0)
    assert same_weights(loop.references[0], initial)
    assert same_weights(loop.references[1], after_round_0)  # reference = previous round's policy
    assert same_weights(loop.starts[1], after_round_0)
    run = tmp_path / "iter" / "run"
    for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "lists.jsonl", "train.jsonl", "metrics.json", "DONE"):
        assert (run / "rounds" / "round-001" / name).exists(), name
    assert (run / "final" / "model.safetensors").exists() and (run / "rounds.jsonl").exists()
    metrics = json.loads((run / "rounds" / "round-000" / "metrics.json").read_text())
    assert metrics["samples/policy"] == 8 * 3 and metrics["judge_calls"] == 24 and metrics["pairs"] > 0


def test_apo_extrapolates_between_un_extrapolated_iterates_and_returns_the_last_one(policy_dir, prompts_file, tmp_path):
    alpha = 0.5
    loop = loop_for(policy_dir, tmp_path, "apo", prompts_file, rounds=3, options={"alpha": alpha})
    theta_0 = {k: v.detach().clone() for k, v in loop.policy.named_parameters()}
    loop.run()
    hat = [theta_0] + [round_policy(tmp_path, r) for r in range(3)]  # theta_hat_0 .. theta_hat_3
    for r in (1, 2):  # round r starts from, samples from and is referenced to theta_hat_r + alpha (theta_hat_r - theta_hat_{r-1})
        expected = {k: hat[r][k] + alpha * (hat[r][k] - hat[r - 1][k]) for k in hat[r]}
        assert same_weights(loop.starts[r], expected, atol=1e-5)
        assert same_weights(loop.references[r], expected, atol=1e-5)
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "final"))
    assert same_weights({k: v for k, v in final.named_parameters()}, hat[3])  # not extrapolated


def test_sppo_trains_on_estimated_win_probabilities(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "sppo", prompts_file, rounds=1, samples_per_prompt=4,
                    options={"win_prob": "hard"})
    loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-000"
    lists = read_jsonl(str(rdir / "lists.jsonl"))
    rows = read_jsonl(str(rdir / "train.jsonl"))
    assert rows
    hard = lambda a, b: 1.0 if a > b else (0.5 if a == b else 0.0)
    for row in rows:
        item = next(it for it in lists if it["prompt"] == row["prompt"])
        s = item["scores"]
        rate = {text: sum(hard(s[i], s[j]) for j in range(len(s))) / len(s) for i, text in enumerate(item["responses"])}
        assert row["win_prob_chosen"] == pytest.approx(rate[row["chosen"]])
        assert row["win_prob_rejected"] == pytest.approx(rate[row["rejected"]])
        assert row["win_prob_chosen"] > row["win_prob_rejected"]
    config = (rdir / "train" / "config.yaml").read_text()
    assert "name: sppo" in config


def test_xpo_pairs_policy_with_reference_samples_and_logs_the_exploration_term(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "xpo", prompts_file, rounds=1, samples_per_prompt=2,
                    options={"alpha": 0.1, "keep_ties": True})
    loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-000"
    sources = {row["source"] for row in read_jsonl(str(rdir / "samples.jsonl"))}
    assert sources == {"policy", "reference"}
    rows = read_jsonl(str(rdir / "train.jsonl"))
    assert rows and {row["ref_is_chosen"] for row in rows} <= {0.0, 1.0}
    logged = [json.loads(line) for line in (rdir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("xpo/ref_logps" in row for row in logged)
    with pytest.raises(ConfigError, match="xpo"):
        checked_config({**online_raw(policy_dir, tmp_path / "x", "xpo", prompts=prompts_file), "loss": {"name": "simpo"}})


def test_dno_keeps_large_margin_pairs_with_teacher_and_replays(policy_dir, prompts_file, tmp_path):
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("".join(json.dumps({"prompt": p, "response": "a b c"}) + "\n" for p in PROMPTS))
    loop = loop_for(policy_dir, tmp_path, "dno", prompts_file, rounds=2, samples_per_prompt=3, prompts_per_round=8,
                    options={"teacher": str(teacher), "min_margin": 2.0, "student_min_margin": 1.0, "replay": 0.5})
    loop.run()
    rdir = tmp_path / "run" / "rounds"
    own = read_jsonl(str(rdir / "round-000" / "pairs.jsonl"))
    assert own and any(row["chosen_source"] == "teacher" for row in own)
    for row in own:
        needed = 1.0 if row["chosen_source"] == "policy" else 2.0
        assert row["chosen_score"] - row["rejected_score"] >= needed
    second = read_jsonl(str(rdir / "round-001" / "pairs.jsonl"))
    replayed = [row for row in second if row.get("replayed_in") == 1]
    new = [row for row in second if row.get("round") == 1 and "replayed_in" not in row]
    assert len(replayed) == int(0.5 * len(new))
    assert len(read_jsonl(str(rdir / "round-001" / "train.jsonl"))) == len(second)


def test_hypo_adds_a_kl_term_on_online_samples_of_the_offline_prompts(policy_dir, tmp_path):
    offline = tmp_path / "offline.jsonl"
    offline.write_text("".join(json.dumps({"prompt": p, "chosen": " a b c", "rejected": " a"}) + "\n"
                               for p in PROMPTS[:8]))
    raw = online_raw(policy_dir, tmp_path / "run", "hypo", rounds=1, samples_per_prompt=2, options={"lam": 0.5})
    raw["data"]["train"] = str(offline)
    raw["online"].pop("judge")
    loop = OnlineLoop(from_dict(raw))
    assert loop.judge is None
    loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-000"
    logged = [json.loads(line) for line in (rdir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("hypo/kl" in row for row in logged)
    assert len(read_jsonl(str(rdir / "train.jsonl"))) == 8


def test_ofs_dpo_trains_two_lora_modules_with_fast_and_slow_rates(policy_dir, prompts_file, tmp_path):
    lrs = []

    class LrSpy(OnlineLoop):
        def make_trainer(self, config, callbacks=(), **options):
            grab = lambda trainer, step: lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
            return super().make_trainer(config, list(callbacks) + [grab], **options)

    loop = loop_for(policy_dir, tmp_path, "ofs_dpo", prompts_file, cls=LrSpy, rounds=1, samples_per_prompt=3,
                    options={"slow_ratio": 0.25, "chasing_interval": 1, "alpha": 0.2},
                    raw_updates={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    before = {k: v.detach().clone() for k, v in loop.policy.named_parameters() if "lora_B" in k} or None
    loop.run()
    assert before is None  # the adapters are added when the run starts
    params = dict(loop.policy.named_parameters())
    for module in ("fast", "slow"):
        trained = [v for k, v in params.items() if "lora_B" in k and f".{module}." in k]
        assert trained and any(v.abs().sum() > 0 for v in trained), module
    assert lrs and all(len(row) == 2 for row in lrs)
    assert all(sorted(row)[0] == pytest.approx(0.25 * sorted(row)[1]) for row in lrs)
    metrics = json.loads((tmp_path / "run" / "rounds" / "round-000" / "metrics.json").read_text())
    assert metrics["ofs_fast_module"] in ("fast", "slow")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "final"))  # the fast module, merged
