"""DSTC pair building on hand-written code and test candidates: the minimax selection, concatenation,
the records for DPO and KTO, and one end-to-end run through the sandbox."""

import pytest

from dpokit.steps.dstc import (build_pair, concatenate, execution_matrix, minimax_select, sandbox_runner,
                               to_dpo, to_kto)

PROMPT = "Write f(xs) returning the sum of the even numbers in xs."
RIGHT = "def f(xs):\n    return sum(x for x in xs if x % 2 == 0)\n"
ODD = "def f(xs):\n    return sum(x for x in xs if x % 2 == 1)\n"  # wrong: sums the odd numbers
ALL = "def f(xs):\n    return sum(xs)\n"  # wrong unless there are no odd numbers
LOOP = "def f(xs):\n    while True:\n        pass\n"  # hangs: must time out, not hang the builder
TESTS = ["assert f([1, 2, 3, 4]) == 6", "assert f([]) == 0", "assert f([2, 4]) == 6",
         "assert f([1, 2]) == 3"]  # the last self-test is wrong (expects the sum of all)


def fake_runner(program):
    """Executes in this process on purpose: only for hand-written, trusted candidates in tests."""
    scope = {}
    try:
        exec(program, scope)  # noqa: S102 (trusted test fixtures, never model output)
        return True
    except AssertionError:
        return False


def test_execution_matrix_and_minimax_on_hand_written_candidates():
    codes = [ODD, RIGHT, ALL]
    E = execution_matrix(codes, TESTS, fake_runner)
    assert E == [[0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]]
    sel = minimax_select(E)
    assert sel.chosen == 1 and sel.chosen_tests == [0, 1, 2]  # passes the most self-tests
    assert sel.rejected == 0 and sel.rejected_tests == [0, 2, 3]  # fewest of the chosen tests
    assert (sel.chosen_passes, sel.rejected_passes, sel.gap) == (3, 1, 2)


def test_a_wrong_test_does_not_make_the_wrong_code_chosen():
    # ALL passes the wrong test and 2 right ones (3 in all), as many as RIGHT: the tie goes to the first
    E = execution_matrix([RIGHT, ALL], TESTS, fake_runner)
    sel = minimax_select(E)
    assert sel.chosen == 0 and sel.rejected == 1 and sel.gap == 1


def test_ties_and_bad_matrices():
    assert minimax_select([[1, 1], [1, 1]]).gap == 0
    with pytest.raises(ValueError, match="at least one code candidate"):
        minimax_select([])
    with pytest.raises(ValueError, match="one entry per test"):
        minimax_select([[1, 0], [1]])


def test_pair_is_dropped_without_a_gap():
    assert build_pair(PROMPT, [RIGHT, RIGHT], TESTS, fake_runner) is None
    with pytest.raises(ValueError, match="at least two code candidates"):
        build_pair(PROMPT, [RIGHT], TESTS, fake_runner)


def test_concatenation_and_records():
    pair = build_pair(PROMPT, [ODD, RIGHT, ALL], TESTS, fake_runner)
    assert pair.chosen == concatenate(RIGHT, TESTS[:3])
    assert pair.rejected == concatenate(ODD, [TESTS[0], TESTS[2], TESTS[3]])
    assert pair.chosen.startswith(RIGHT.rstrip()) and TESTS[2] in pair.chosen
    dpo = to_dpo([pair])
    assert dpo == [{"prompt": PROMPT, "chosen": pair.chosen, "rejected": pair.rejected, "dstc_gap": 2.0}]
    kto = to_kto([pair])
    assert [r["label"] for r in kto] == [True, False] and kto[1]["completion"] == pair.rejected


def test_end_to_end_through_the_sandbox():
    # LOOP hangs: the sandbox times it out (counted as failing every test) instead of hanging the build
    runner = sandbox_runner(timeout=1.0)
    pair = build_pair(PROMPT, [LOOP, RIGHT], TESTS[:2], runner)
    assert pair is not None and pair.selection.chosen == 1 and pair.selection.rejected == 0
    assert pair.selection.gap == 2
