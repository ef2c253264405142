"""`dpokit demo --task arithmetic`: pair builders, and the whole experiment end to end (slow)."""

import json
import random

import pytest

from dpokit.cli import main
from dpokit.tasks.arithmetic import ArithmeticTask, Problem
from dpokit.tasks.arithmetic_demo import outcome_pairs, verifier_step_pairs

PROBLEM = Problem((3, 4, 2), ("+", "*"))


def test_verifier_pairs_cut_at_the_first_wrong_step():
    task = ArithmeticTask()
    samples = [[["4 * 2 = 8", "3 + 8 = 1 2", "answer 1 2"], PROBLEM.gold(), ["4 * 2 = 9", "3 + 9 = 1 2", "answer 1 2"]]]
    pairs = verifier_step_pairs(task, [PROBLEM], samples)
    assert [(p.prefix_steps, p.chosen, p.rejected) for p in pairs] == [
        (["4 * 2 = 8"], ["3 + 8 = 1 1"], ["3 + 8 = 1 2"]), ([], ["4 * 2 = 8"], ["4 * 2 = 9"])]
    assert not any(p.chosen_final or p.rejected_final for p in pairs)


def test_outcome_pairs_prefer_a_right_solution():
    task = ArithmeticTask()
    rows = outcome_pairs(task, [PROBLEM], [[["4 * 2 = 9", "3 + 9 = 1 2", "answer 1 2"]]], seed=0)
    assert rows[0]["chosen"] == " 4 * 2 = 8 ; 3 + 8 = 1 1 ; answer 1 1"  # no right sample: the gold one
    assert outcome_pairs(task, [PROBLEM], [[PROBLEM.gold()]], seed=0) == []  # nothing wrong: no pair


def test_online_is_refused_for_arithmetic(capsys):
    assert main(["demo", "--task", "arithmetic", "--online"]) == 2
    assert "parity task only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["step_dpo", "dpo"])
def test_quick_demo_runs(tmp_path, method):
    assert main(["demo", "--task", "arithmetic", "--method", method, "--quick", "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == method and summary["train_pairs"] > 0
    for key in ("step_accuracy", "answer_accuracy", "greedy_answer_accuracy"):
        assert 0 <= summary["after"][key] <= 1
