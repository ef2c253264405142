"""The online demo on the built-in parity task."""

import json

import pytest

pytestmark = pytest.mark.slow  # the online demo end to end


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


@pytest.mark.parametrize("strategy", ["grpo", "copo"])
def test_online_demo_with_a_group_strategy(tmp_path, strategy):
    from dpokit.tasks.demo import DemoSettings
    from dpokit.tasks.online_demo import run_online_demo

    settings = DemoSettings(output_dir=str(tmp_path / "demo"), n_train_prompts=32, n_eval_prompts=16,
                            samples_per_prompt=4, warmup_steps=30, dpo_epochs=1, hidden_size=32)
    summary = run_online_demo(settings, strategy=strategy, rounds=2, log=lambda *a: None)
    assert summary["loss"] == strategy and len(summary["per_round"]) == 2
    for metrics in summary["per_round"]:
        assert metrics["trained"]
        if strategy == "grpo":  # GRPO's advantages vanish exactly in the groups whose rewards all agree
            assert metrics["groups/vanishing"] == metrics["groups/all_equal"]
        else:  # COPO's only in those too (and not even there when the batch mixes accuracies)
            assert 0.0 <= metrics["groups/vanishing"] <= metrics["groups/all_equal"]
