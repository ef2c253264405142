"""Round strategies on a tiny model: which reference each round trains against, APO's extrapolation,
SPPO's win probabilities, XPO/DNO/HyPO/OFS-DPO data, per-step refresh, TR-DPO sync, and resume."""

import json

import pytest
from safetensors.torch import load_file

from dpokit.config import ConfigError, from_dict
from dpokit.preflight import checked_config
from dpokit.online.loop import OnlineLoop, load_prompts, read_jsonl, select_pairs

from .conftest import PROMPTS, length_judge, online_raw, same_weights


class SpyLoop(OnlineLoop):
    """Records, for every round's Trainer, the reference weights and the policy it starts from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.references, self.starts = [], []

    def make_trainer(self, config, callbacks=()):
        trainer = super().make_trainer(config, callbacks)
        ref = trainer.reference.model
        self.references.append({k: v.detach().clone() for k, v in ref.named_parameters()})
        self.starts.append({k: v.detach().clone() for k, v in self.policy.named_parameters()})
        return trainer


def loop_for(policy_dir, tmp_path, strategy, prompts_file=None, cls=SpyLoop, judge=None, raw_updates=None, **online):
    raw = online_raw(policy_dir, tmp_path / "run", strategy, **online)
    if prompts_file:
        raw["online"]["prompts"] = prompts_file
    for section, values in (raw_updates or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return cls(from_dict(raw), judge=judge)


def round_policy(tmp_path, r):
    return load_file(str(tmp_path / "run" / "rounds" / f"round-{r:03d}" / "policy.safetensors"))


def test_select_pairs_and_prompt_loading(tmp_path):
    assert select_pairs(["a", "b", "c"], [0.0, 2.0, 1.0]) == [(1, 0)]
    assert select_pairs(["a", "b", "c"], [0.0, 2.0, 1.0], "all_pairs") == [(1, 2), (1, 0), (2, 0)]
    assert select_pairs(["a", "a", "c"], [1.0, 1.0, 1.0]) == []  # ties give nothing
    assert select_pairs(["a", "b"], [1.0, 0.5], min_margin=0.6) == []
    assert select_pairs(["a", "b"], [1.0, 0.5], min_margin=0.5) == [(0, 1)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": "x", "chosen": "a", "rejected": "b"}, {"prompt": "x", "chosen": "c", "rejected": "d"},
        {"chosen": "Human: y\n\nAssistant: a", "rejected": "Human: y\n\nAssistant: b"})))
    assert load_prompts(str(path)) == ["x", "Human: y\n\nAssistant:"]


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


def test_fresh_pairs_every_step(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "online_dpo", prompts_file, rounds=1, refresh_every=1, prompts_per_round=8,
                    samples_per_prompt=4)
    result = loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-000"
    assert (rdir / "samples-0000.jsonl").exists() and (rdir / "samples-0001.jsonl").exists()
    assert result["metrics"][0]["slices"] == 2 and result["metrics"][0]["steps"] == 2
    with pytest.raises(ConfigError, match="refresh_every"):
        checked_config(online_raw(policy_dir, tmp_path / "x", "iterative_dpo", prompts="p.jsonl", refresh_every=1))


def test_reference_sync_carries_over_rounds(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "online_dpo", prompts_file,
                    raw_updates={"reference": {"sync_every": 1, "sync_alpha": 1.0}})
    loop.run()
    # a hard sync after every step: round 1's reference is round 0's final policy
    assert same_weights(loop.references[1], round_policy(tmp_path, 0), atol=1e-6)


class FlakyJudge:
    """Counts judged responses; raises once ``fail_after`` responses were judged."""

    def __init__(self, fail_after=None):
        self.count, self.fail_after = 0, fail_after

    def score(self, prompts, responses):
        if self.fail_after is not None and self.count + len(responses) > self.fail_after:
            raise RuntimeError("judge crashed")
        self.count += len(responses)
        return [length_judge(p, r) for p, r in zip(prompts, responses)]


def test_resume_reuses_samples_and_scores_and_skips_finished_rounds(policy_dir, prompts_file, tmp_path, monkeypatch):
    # 8 prompts x 3 samples per round, judged in chunks of 4 prompts (12 responses)
    first = FlakyJudge(fail_after=24 + 12)  # round 0 (24) and round 1's first chunk, then a crash
    loop = loop_for(policy_dir, tmp_path, "iterative_dpo", prompts_file, judge=first, generation_batch_size=4)
    with pytest.raises(RuntimeError, match="judge crashed"):
        loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-001"
    assert (tmp_path / "run" / "rounds" / "round-000" / "DONE").exists() and not (rdir / "DONE").exists()
    samples_before = (rdir / "samples.jsonl").read_text()
    assert len(read_jsonl(str(rdir / "scores.jsonl"))) == 4

    sampled = []
    original = OnlineLoop.sample
    monkeypatch.setattr(OnlineLoop, "sample", lambda self, *a, **k: sampled.append(1) or original(self, *a, **k))
    second = FlakyJudge()
    with pytest.raises(ConfigError, match="--resume"):
        loop_for(policy_dir, tmp_path, "iterative_dpo", prompts_file, judge=second, generation_batch_size=4).run()
    loop = loop_for(policy_dir, tmp_path, "iterative_dpo", prompts_file, judge=second, generation_batch_size=4)
    result = loop.run(resume=True)
    assert result["status"] == "completed"
    assert second.count == 12  # only round 1's unjudged chunk
    assert sampled == []  # every sample was on disk
    assert (rdir / "samples.jsonl").read_text() == samples_before
    assert len(read_jsonl(str(rdir / "scores.jsonl"))) == 8
    # the resumed round's reference is round 0's policy, as in an uninterrupted run
    assert same_weights(loop.references[0], round_policy(tmp_path, 0))
    assert len(read_jsonl(str(tmp_path / "run" / "rounds.jsonl"))) == 2
    # everything done: resuming again judges and trains nothing
    third = FlakyJudge()
    loop_for(policy_dir, tmp_path, "iterative_dpo", prompts_file, judge=third, generation_batch_size=4).run(resume=True)
    assert third.count == 0


def test_config_validation(policy_dir, tmp_path):
    raw = online_raw(policy_dir, tmp_path / "run", "no_such_strategy", prompts="p.jsonl")
    with pytest.raises(ConfigError, match="online.strategy"):
        checked_config(raw)
    with pytest.raises(ConfigError, match="online.options"):
        checked_config(online_raw(policy_dir, tmp_path / "run", "apo", prompts="p.jsonl", options={"beta": 1}))
    raw = online_raw(policy_dir, tmp_path / "run", "online_dpo", prompts="p.jsonl")
    raw["online"].pop("judge")
    with pytest.raises(ConfigError, match="online.judge"):
        checked_config(raw)
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        checked_config(online_raw(policy_dir, tmp_path / "run", "sppo", prompts="p.jsonl", samples_per_prompt=1))


def test_listwise_loss_trains_on_the_judged_lists(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "online_dpo", prompts_file, rounds=1, samples_per_prompt=4,
                    raw_updates={"loss": {"name": "plackett_luce", "beta": 0.5}, "data": {"kind": "lists"}})
    loop.run()
    rows = read_jsonl(str(tmp_path / "run" / "rounds" / "round-000" / "train.jsonl"))
    assert rows and all(len(r["responses"]) == len(r["scores"]) >= 2 and len(set(r["scores"])) > 1 for r in rows)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_lora_policy_uses_its_base_as_the_frozen_reference(policy_dir, prompts_file, tmp_path):
    from dpokit.reference import AdapterDisabledReference

    loop = loop_for(policy_dir, tmp_path, "online_dpo", prompts_file, cls=OnlineLoop, rounds=1,
                    raw_updates={"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}})
    loop.run()
    assert isinstance(loop.frozen_reference(), AdapterDisabledReference)
    assert (tmp_path / "run" / "final" / "adapter").is_dir() and (tmp_path / "run" / "final" / "model.safetensors").exists()
