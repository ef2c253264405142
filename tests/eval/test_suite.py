"""The evaluation suite on a model against itself (dpokit.eval.suite)."""

import pytest

from dpokit.eval.suite import EvalSettings, evaluate_checkpoint


def test_identical_policy_and_reference(tiny_model, tokenizer):
    from dpokit.data import tokenize_examples
    from dpokit.data.formats import PreferencePair

    from conftest import make_pairs

    pairs, _ = tokenize_examples([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in make_pairs(6)],
                                 tokenizer, max_length=64)
    result, rows = evaluate_checkpoint(tiny_model, tiny_model, tokenizer, pairs, judge=lambda p, r: len(r),
                                       settings=EvalSettings(samples=2, max_new_tokens=4, layer_positions=64))
    assert result["preference_accuracy"] == 0.5 and result["reward_margin_mean"] == 0.0
    assert result["kl"] == pytest.approx(0.0, abs=1e-6) and result["kl_mc"] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(v) < 1e-6 for v in result["logp_drift"].values())
    assert result["win_rate"] == 0.5  # same seed, same model: the same answers
    assert result["judge_reward"] == result["judge_reward_reference"]
    assert all(d == 0.0 for d in result["layers"]["contraction"]["delta"] + result["layers"]["transport"]["delta"])
    assert rows[0]["policy"] == rows[0]["reference"]
