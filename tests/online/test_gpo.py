"""GPO: general-preference scores as SPPO-style targets; a round with a tiny GPM judge."""

import json
import math

import numpy as np
import pytest
import torch

from dpokit.online.gpo import gpo_target, group_scores, preference_table
from dpokit.online.loop import read_jsonl

from .conftest import loop_for


def test_scores_recover_the_gpm_table_and_clamp():
    from dpokit.preference.gpm import gpm_score_matrix

    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    T = gpm_score_matrix(v)  # |s / tau| up to ~26: float64 probabilities still hold it
    win = torch.sigmoid(T / 0.1).tolist()
    np.testing.assert_allclose(preference_table(win, tau=0.1), T.numpy(), atol=1e-6)
    rows = group_scores(T.tolist())
    np.testing.assert_allclose(rows, T.numpy().mean(1))
    np.testing.assert_allclose(group_scores(T.tolist(), "antisymmetric"), 2 * T.numpy().mean(1))  # skew-symmetric
    assert gpo_target(5.0, beta=1e-3, clamp=1000.0) == pytest.approx(1.0)
    assert gpo_target(-0.2, beta=1e-3, clamp=1000.0) == pytest.approx(-0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sppo_at_shifted_probabilities_is_half_the_gpo_loss(seed):
    """sppo with P = 1/2 + s_bar equals 1/2 [(r_w - s_bar_w/beta)^2 + (r_l - s_bar_l/beta)^2] (NumPy)."""
    from dpokit.losses import LossInputs, get_loss

    g = torch.Generator().manual_seed(seed)
    t = lambda: -(1 + 10 * torch.rand(4, generator=g, dtype=torch.float64))  # noqa: E731
    pw, pl, rw, rl = t(), t(), t(), t()
    s_w, s_l = torch.rand(4, generator=g, dtype=torch.float64) * 0.5, -torch.rand(4, generator=g, dtype=torch.float64)
    beta = 0.05
    inputs = LossInputs(policy_chosen_logps=pw, policy_rejected_logps=pl, reference_chosen_logps=rw,
                        reference_rejected_logps=rl, extras={"win_prob_chosen": 0.5 + s_w,
                                                             "win_prob_rejected": 0.5 + s_l})
    got = get_loss("sppo", beta=beta)(inputs).loss.numpy()
    d = {k: x.numpy() for k, x in dict(pw=pw, pl=pl, rw=rw, rl=rl, sw=s_w, sl=s_l).items()}
    gpo = ((d["pw"] - d["rw"]) - d["sw"] / beta) ** 2 + ((d["pl"] - d["rl"]) - d["sl"] / beta) ** 2
    np.testing.assert_allclose(got, 0.5 * gpo, rtol=1e-12)


@pytest.fixture
def gpm_judge_dir(tmp_path, word_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(word_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=4,
                         pad_token_id=word_tokenizer.pad_token_id)
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(config)
    model.config.dpokit_reward_model = {"kind": "gpm", "dim": 4, "prompt_head": False, "tau": 0.1}
    path = tmp_path / "gpm-judge"
    model.save_pretrained(path, safe_serialization=True)
    word_tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_gpo_round_with_a_tiny_gpm_judge(policy_dir, prompts_file, gpm_judge_dir, tmp_path):
    from dpokit.preference.gpm import GPMJudge

    loop = loop_for(policy_dir, tmp_path, "gpo", prompts_file, rounds=1, samples_per_prompt=4,
                    judge={"kind": "gpm", "path": gpm_judge_dir, "device": "cpu"})
    assert isinstance(loop.judge, GPMJudge)
    result = loop.run()
    assert result["status"] == "completed"
    rdir = tmp_path / "run" / "rounds" / "round-000"
    rows = read_jsonl(str(rdir / "train.jsonl"))
    assert rows and "name: sppo" in (rdir / "train" / "config.yaml").read_text()
    judge = GPMJudge.from_pretrained(gpm_judge_dir, device="cpu")
    samples = {row["prompt"]: row["responses"] for row in read_jsonl(str(rdir / "samples.jsonl"))}
    for row in rows[:4]:
        responses = samples[row["prompt"]]
        T = judge.score_matrix(row["prompt"], responses).double()
        s_bar = T.mean(1)  # the row mean of the raw GPM scores
        assert row["win_prob_chosen"] - 0.5 == pytest.approx(float(s_bar.max()), abs=1e-4)
        assert row["win_prob_rejected"] - 0.5 == pytest.approx(float(s_bar.min()), abs=1e-4)
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert metrics["pairs"] == len(rows) and math.isfinite(metrics.get("train/loss", metrics.get("loss", 0.0)))
