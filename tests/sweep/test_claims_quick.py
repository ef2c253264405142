"""The claim scripts' --quick mode (a few steps on a tiny split) runs end to end and prints a verdict."""

import os

import pytest

from conftest import load_claim as load


@pytest.mark.slow
@pytest.mark.parametrize("name, methods", [("length", {"dpo", "ld_dpo", "simpo"}),
                                           ("label_noise", {"dpo @ 30% flipped", "rdpo @ 0% flipped"}),
                                           ("lists", {"dpo / best_vs_worst", "plackett_luce", "lipo_lambda"})])
def test_quick(name, methods, tmp_path, capsys):
    record = load(name).main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert methods <= set(record["results"])
    assert "claim: " in out and "| method | n |" in out
    assert all(set(per_seed) == {"0"} for per_seed in record["results"].values())
    assert os.path.exists(tmp_path / "claim.json")
    # the claim's sweep.json groups every run by method: `dpokit report OUT` draws the whole claim
    import json

    sweep = json.load(open(tmp_path / "sweep.json"))
    assert {g["group"] for g in sweep["summary"]} == {f"method={m}" for m in record["results"]}
    assert all(os.path.isdir(tmp_path / r["dir"]) for r in sweep["rows"])
    # rerunning reuses every finished run (the sweep's DONE markers): nothing trains again
    again = load(name).main(["--quick", "--out", str(tmp_path)])
    assert again["results"] == record["results"] and again["seconds"] < 5


@pytest.mark.slow
def test_online_quick(tmp_path, capsys):
    """The online-vs-offline claim (not a sweep: offline demo + online rounds from its warm-up model)."""
    record = load("online").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(record["results"]) == {"offline dpo (1 pass)", "online_dpo (4 rounds)", "iterative_dpo (4 rounds)"}
    assert "claim: UNDECIDED" in out  # one seed: no interval
    online = record["results"]["online_dpo (4 rounds)"]["0"]
    offline = record["results"]["offline dpo (1 pass)"]["0"]
    assert online["generated_samples"] == 48 * 4  # the offline run's budget: n_train_prompts x samples_per_prompt
    assert offline["train_pairs"] > 0 and online["train_pairs"] > 0
    again = load("online").main(["--quick", "--out", str(tmp_path)])
    assert again["results"] == record["results"] and again["seconds"] < 5
