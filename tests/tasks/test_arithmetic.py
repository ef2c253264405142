"""The arithmetic task: gold solutions, the verifier's per-step labels, noisy trajectories."""

import random

import pytest

from dpokit.tasks.arithmetic import (ArithmeticTask, Problem, gold_steps, join_steps, parse_equation,
                                     split_steps)

PROBLEM = Problem((3, 4, 2, 1), ("+", "*", "-"))


def test_gold_solution_reduces_multiplication_first():
    assert PROBLEM.gold() == ["4 * 2 = 8", "3 + 8 = 1 1", "1 1 - 1 = 1 0", "answer 1 0"]
    assert PROBLEM.value == 3 + 4 * 2 - 1
    assert gold_steps((2, 3, 4), ("-", "+"))[0] == (2, "-", 3, -1)


def test_prompt_round_trip():
    task = ArithmeticTask(n_ops=3)
    assert task.prompt(PROBLEM) == "problem : 3 + 4 * 2 - 1 ."
    assert task.problem_of(task.prompt(PROBLEM)) == PROBLEM


def test_verifier_labels_steps_up_to_the_first_error():
    task = ArithmeticTask(n_ops=3)
    verdict = task.verify(PROBLEM, PROBLEM.gold())
    assert verdict.steps == [True] * 4 and verdict.outcome and verdict.first_error is None
    wrong = ["4 * 2 = 8", "3 + 8 = 1 2", "1 2 - 1 = 1 1", "answer 1 1"]
    verdict = task.verify(PROBLEM, wrong)
    assert verdict.steps == [True, False, False, False] and not verdict.outcome and verdict.first_error == 1
    # a right equation in the wrong order is a wrong step; a right answer reached otherwise is a right outcome
    verdict = task.verify(PROBLEM, ["3 + 4 = 7", "answer 1 0"])
    assert verdict.steps == [False, False] and not verdict.outcome
    verdict = task.verify(PROBLEM, ["4 * 2 = 8", "3 + 8 = 1 1", "1 1 - 1 = 1 0"])
    assert verdict.steps == [True, True, True] and not verdict.outcome and verdict.answer is None
    assert task.verify(PROBLEM, ["x y", "answer"]).steps == [False, False]


def test_parse_equation():
    assert parse_equation("1 1 - 1 = 1 0") == (11, "-", 1, 10)
    assert parse_equation("4 * = 8") is None and parse_equation("4 * 2") is None


def test_text_round_trip_and_reward():
    task = ArithmeticTask(n_ops=3)
    text = join_steps(PROBLEM.gold())
    assert split_steps(text) == PROBLEM.gold()
    assert task.reward(task.prompt(PROBLEM), text) == 1.0
    assert task.reward(task.prompt(PROBLEM), " 4 * 2 = 8 ; answer 8") == 0.0


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_trajectory_error_rate_is_controlled(rate):
    task = ArithmeticTask(n_ops=2, seed=3)
    rng = random.Random(0)
    problems, _ = task.split(300, 0)
    first_steps = [task.verify(p, task.trajectory(p, rate, rng)).steps[0] for p in problems]
    error = 1 - sum(first_steps) / len(first_steps)
    assert abs(error - rate) < 0.08
    # right steps give the right outcome; a wrong step mostly a wrong one; values never go negative
    lucky = 0
    for p in problems:
        steps = task.trajectory(p, rate, rng)
        verdict = task.verify(p, steps)
        assert verdict.outcome or not all(verdict.steps)
        lucky += verdict.outcome and not all(verdict.steps)
        assert "-" not in steps[-1]
    assert lucky <= 0.2 * len(problems)  # two errors can cancel


def test_split_is_disjoint_and_seeded():
    task = ArithmeticTask(seed=1)
    train, held = task.split(100, 50)
    assert not set(train) & set(held) and len(set(train)) == 100
    assert task.split(100, 50) == (train, held)
    for p in train:
        assert all(0 <= s[3] <= task.max_value for s in gold_steps(p.numbers, p.ops))
