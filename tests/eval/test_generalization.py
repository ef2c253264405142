"""Implicit vs explicit reward accuracy in and out of distribution (`dpokit eval --explicit-rm`)."""

from __future__ import annotations

import json

import pytest
import torch

from dpokit.cli import main
from dpokit.data import load_examples
from dpokit.eval.generalization import explicit_margins, format_generalization, implicit_margins, reward_generalization
from dpokit.preference.judges import CallableJudge
from tests.conftest import make_pairs, write_jsonl


def word_count(prompt, response):
    return float(len(response.split()))


@pytest.fixture
def splits(tmp_path):
    base = load_examples(write_jsonl(tmp_path / "a.jsonl", make_pairs(12, seed=1)), "pairs")
    shifted = load_examples(write_jsonl(tmp_path / "b.jsonl", make_pairs(10, seed=2)), "pairs")
    return {"in_distribution": base, "shift": shifted}


def test_implicit_margins_match_log_ratios(tiny_model, tokenizer, splits):
    """beta * (log-ratio chosen - log-ratio rejected), recomputed from full-sequence log-probs."""
    torch.manual_seed(0)
    reference = type(tiny_model)(tiny_model.config).eval()
    pairs = splits["in_distribution"][:4]
    margins = implicit_margins(tiny_model.eval(), reference, tokenizer, pairs, beta=0.3)

    def logp(model, prompt, response):
        p = tokenizer(prompt)["input_ids"]
        ids = p + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        return float(sum(logits[t - 1, ids[t]] for t in range(len(p), len(ids))))

    for pair, m in zip(pairs, margins):
        ratio = lambda y: logp(tiny_model, pair.prompt, y) - logp(reference, pair.prompt, y)
        assert m == pytest.approx(0.3 * (ratio(pair.chosen) - ratio(pair.rejected)), abs=1e-4)


def test_reward_generalization_rows_and_drops(tiny_model, tokenizer, splits):
    """Policy = reference: every implicit margin is 0, accuracy exactly 1/2 on every split; the explicit
    accuracy is the word-count judge's, computed here by hand."""
    judge = CallableJudge(word_count)
    result = reward_generalization(tiny_model, tiny_model, tokenizer, judge, splits, beta=0.1)
    for name, pairs in splits.items():
        row = result["splits"][name]
        margins = [len(p.chosen.split()) - len(p.rejected.split()) for p in pairs]
        expected = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(pairs)
        assert row["implicit_accuracy"] == 0.5 and row["explicit_accuracy"] == pytest.approx(expected)
        assert row["num_pairs"] == len(pairs)
    shift, base = result["splits"]["shift"], result["splits"]["in_distribution"]
    assert shift["implicit_drop"] == 0.0 and base["explicit_drop"] == 0.0
    assert shift["explicit_drop"] == pytest.approx(base["explicit_accuracy"] - shift["explicit_accuracy"])
    assert shift["drop_difference"] == pytest.approx(-shift["explicit_drop"])
    assert explicit_margins(judge, splits["shift"][:1]) == [
        len(splits["shift"][0].chosen.split()) - len(splits["shift"][0].rejected.split())]
    assert "in_distribution" in format_generalization(result)
    with pytest.raises(ValueError, match="needs a reference"):
        reward_generalization(tiny_model, None, tokenizer, judge, splits)
    with pytest.raises(ValueError, match="no split named"):
        reward_generalization(tiny_model, tiny_model, tokenizer, judge, {"shift": splits["shift"]})


@pytest.fixture
def reward_model_dir(tmp_path, tiny_model_dir):
    from dpokit.preference.judges import load_reward_model
    from dpokit.preference.reward_model import save_reward_model

    torch.manual_seed(0)
    model, tokenizer = load_reward_model(tiny_model_dir)
    return save_reward_model(model, tokenizer, str(tmp_path / "rm"))


def test_eval_flag_reports_the_table(tmp_path, tiny_model_dir, reward_model_dir, capsys):
    heldout = write_jsonl(tmp_path / "heldout.jsonl", make_pairs(8, seed=3))
    shifted = write_jsonl(tmp_path / "long.jsonl", make_pairs(6, seed=4))
    code = main(["eval", "--model", tiny_model_dir, "--ref", tiny_model_dir, "--data", heldout, "--no-diagnostics",
                 "--explicit-rm", reward_model_dir, "--shift-data", f"longer={shifted}", "--shift-data", shifted])
    assert code == 0, capsys.readouterr().err
    section = json.loads(capsys.readouterr().out)["reward_generalization"]
    assert list(section["splits"]) == ["in_distribution", "longer", "long"]
    assert section["splits"]["longer"]["num_pairs"] == 6
    assert section["splits"]["in_distribution"]["implicit_accuracy"] == 0.5  # policy = reference


@pytest.mark.parametrize("extra, message", [
    (["--shift-data", "x.jsonl"], "--shift-data needs --explicit-rm"),
    (["--explicit-rm", "rm", "--ref", "none"], "needs a reference"),
])
def test_eval_flag_mistakes(tmp_path, tiny_model_dir, capsys, extra, message):
    heldout = write_jsonl(tmp_path / "heldout.jsonl", make_pairs(4))
    assert main(["eval", "--model", tiny_model_dir, "--data", heldout] + extra) == 2
    assert message in capsys.readouterr().err
