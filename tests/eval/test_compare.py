"""`dpokit compare` on the evaluated run."""

import json

from dpokit.cli import main


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
