"""The online loop: reference sync across rounds, resume after a crash, config checks, listwise losses,
LoRA policies, and `dpokit train` with an `online:` section."""

import json

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import ConfigError
from dpokit.preflight import checked_config
from dpokit.online.loop import OnlineLoop, read_jsonl

from conftest import length_judge
from .conftest import loop_for, online_raw, round_policy, same_weights

pytestmark = pytest.mark.slow  # online runs end to end: sampling, judging and training rounds


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


def test_dpokit_train_runs_online_rounds_and_resumes(policy_dir, prompts_file, tmp_path, capsys):
    raw = online_raw(policy_dir, tmp_path / "run", "online_dpo", prompts=prompts_file, eval_prompts=prompts_file,
                     rounds=2)
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["status"] == "completed" and len(out["metrics"]) == 2
    assert all("eval/judge_score" in m for m in out["metrics"])
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert (tmp_path / "run" / "config.yaml").exists()
    assert main(["train", str(path), "--resume"]) == 0  # nothing left to do
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["status"] == "completed"
    assert main(["train", str(path)]) == 2  # refuses to mix a new run into finished rounds
