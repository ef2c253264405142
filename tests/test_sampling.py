"""`dpokit train` with an `online:` section, the sampler interface, and the online demo on the built-in task."""

import json

import pytest
import yaml

from dpokit.cli import main
from dpokit.sampling import HFSampler, Sampler, SamplingConfig, VLLMSampler, make_sampler

from .conftest import online_raw


def test_sampler_interface(policy_dir, word_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    sampler = make_sampler("hf", model, word_tokenizer, SamplingConfig(max_new_tokens=4, batch_size=2, seed=3))
    assert isinstance(sampler, Sampler)
    texts, ids = sampler.sample(["q a e :", "q b f :", "q c g :"], 3)
    assert len(texts) == 3 and all(len(group) == 3 for group in texts)
    assert all(len(row) <= 4 and word_tokenizer.eos_token_id not in row for group in ids for row in group)
    assert sampler.sample(["q a e :", "q b f :", "q c g :"], 3)[0] == texts  # seeded
    greedy = HFSampler(model, word_tokenizer, SamplingConfig(max_new_tokens=4, temperature=0.0))
    first = greedy.sample(["q a e :"], 2)[0][0]
    assert first[0] == first[1]
    try:
        import vllm  # noqa: F401  (only its absence is tested)
    except ImportError:
        with pytest.raises(RuntimeError, match="vllm"):
            VLLMSampler(policy_dir, word_tokenizer)


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


def test_online_demo_writes_the_offline_summary(tmp_path):
    from dpokit.tasks.demo import DemoSettings
    from dpokit.tasks.online_demo import run_online_demo

    settings = DemoSettings(output_dir=str(tmp_path / "demo"), n_train_prompts=32, n_eval_prompts=16,
                            samples_per_prompt=4, warmup_steps=30, dpo_epochs=1, hidden_size=32)
    summary = run_online_demo(settings, strategy="iterative_dpo", rounds=2, log=lambda *a: None)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for part in ("before", "after"):
        for key in ("reward", "preference_accuracy", "kl", "length"):
            assert key in saved[part]
    assert saved["strategy"] == "iterative_dpo" and len(saved["per_round"]) == 2
    assert saved["generated_samples"] == 32 * 4  # the offline demo's budget: n_train_prompts x samples
    assert all(isinstance(summary["after"][k], float) for k in ("reward", "kl", "length"))
