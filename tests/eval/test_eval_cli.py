"""`dpokit eval`, `dpokit compare` and `dpokit report` on a tiny trained run."""

import json
import os

import pytest

from dpokit.cli import main
from dpokit.eval.suite import EVAL_KEYS, EvalSettings, evaluate_checkpoint

from .conftest import read_jsonl


def test_eval_writes_every_key(evaluated_run, tiny_model_dir):
    result = json.load(open(os.path.join(evaluated_run["run"], "eval.json")))
    assert set(EVAL_KEYS) <= set(result)
    assert result["reference"] == tiny_model_dir  # the run's reference (its initial model)
    assert result["beta"] == 0.1 and result["num_pairs"] == 12
    for key in ("preference_accuracy", "reward_margin_mean", "judge_reward", "win_rate", "kl", "length_mean",
                "distinct_2", "topk_mass", "topk_entropy", "separability", "loss"):
        assert isinstance(result[key], float), key
    assert set(result["logp_drift"]) >= {"chosen", "rejected", "unseen", "reference_samples"}
    assert 0.0 <= result["win_rate"] <= 1.0 and result["kl"] >= 0.0
    assert len(result["layers"]["contraction"]["policy"]) == 2 and len(result["layers"]["transport"]["delta"]) == 1
    hist = result["reward_margin_histogram"]
    assert sum(hist["counts"]) == 12 and len(hist["edges"]) == len(hist["counts"]) + 1
    samples = read_jsonl(os.path.join(evaluated_run["run"], "samples.jsonl"))
    assert len(samples) == 12 and all(len(s["policy"]) == 2 and len(s["reference"]) == 2 for s in samples)
    assert all(len(s["policy_scores"]) == 2 for s in samples)


def test_eval_table_and_checkpoint_model(evaluated_run, capsys):
    run = evaluated_run["run"]
    checkpoint = os.path.join(run, "checkpoints", sorted(os.listdir(os.path.join(run, "checkpoints")))[-1])
    capsys.readouterr()
    assert main(["eval", "--model", checkpoint, "--data", evaluated_run["heldout"], "--no-diagnostics"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_checkpoint["step"] == 4
    final = json.load(open(os.path.join(run, "eval.json")))
    # the last checkpoint holds the final weights
    assert from_checkpoint["preference_accuracy"] == final["preference_accuracy"]
    assert from_checkpoint["logps_chosen_mean"] == pytest.approx(final["logps_chosen_mean"], abs=1e-4)
    assert main(["eval", "--model", run, "--data", evaluated_run["heldout"], "--format", "table", "--no-diagnostics",
                 "--ref", "none"]) == 0
    table = capsys.readouterr().out
    assert "preference accuracy" in table and "no reference" in table


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


def test_compare_table(evaluated_run, trained_run, capsys):
    run = evaluated_run["run"]
    capsys.readouterr()
    assert main(["compare", run, run]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "kl" in table and "dpo" in table
    assert main(["compare", run, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["loss"] == "dpo" and row["beta"] == 0.1 and row["steps"] == 4
    assert row["sources"]["kl"] == "eval:kl" and row["sources"]["accuracy"] == "eval:preference_accuracy"


def test_report_is_self_contained(report_dir):
    out = report_dir
    page = (out / "index.html").read_text()
    for plot in ("curves", "monitor", "frontier", "margins", "layers"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f'id="{plot}"' in page
    assert page.count("data:image/png;base64,") == 5
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Sample answers" in page and "Reward vs KL" in page
