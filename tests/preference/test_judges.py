"""Judges (dpokit.preference.judges): callables from objects, modules, files and built-in names; pairwise judges."""

import math

import pytest

from dpokit.preference.judges import (BradleyTerryJudge, CallableJudge, CallablePairwiseJudge, build_judge, judge_group,
                                      pair_probability)

from conftest import JUDGE_SPEC, length_judge


def test_callable_judge_from_object_module_file_and_builtin():
    assert CallableJudge(length_judge).score(["p", "p"], ["a b c", "a"]) == [0.0, -2.0]
    from_file = build_judge({"kind": "callable", "function": JUDGE_SPEC})
    assert from_file.score(["p"], ["a b c d"]) == [-1.0]
    parity = build_judge("dpokit.tasks.online_demo:parity_reward")
    assert parity.score(["number : 0 0 4 . even or odd ?"] * 2, ["it is even", "odd"]) == [1.0, 0.0]
    batched = CallableJudge(lambda ps, rs: [len(r) for r in rs], batched=True)
    assert batched.score(["x", "y"], ["ab", "abc"]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="non-finite"):
        CallableJudge(lambda p, r: float("nan")).score(["p"], ["r"])
    with pytest.raises(ValueError, match="kind"):
        build_judge({"kind": "oracle"})


def test_pairwise_judges_and_group_win_matrix():
    assert pair_probability(1.0, 0.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert [pair_probability(a, b, "hard") for a, b in ((1, 0), (0, 0), (0, 1))] == [1.0, 0.5, 0.0]
    bt = BradleyTerryJudge(CallableJudge(length_judge), scale=2.0)
    assert bt.prefer(["p"], ["a b c"], ["a"]) == [pytest.approx(1 / (1 + math.exp(-4)))]
    # pointwise: scores as given, win matrix from them
    scores, win = judge_group(CallableJudge(length_judge), "p", ["a b c", "a", "a b"], mode="hard")
    assert scores == [0.0, -2.0, -1.0]
    assert win == [[0.5, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
    # pairwise: each unordered pair judged once; the score is the mean win rate
    calls = []

    def longer(prompt, a, b):
        calls.append((a, b))
        return 0.9 if len(a) > len(b) else 0.1

    scores, win = judge_group(CallablePairwiseJudge(longer), "p", ["aaa", "a", "aa"])
    assert len(calls) == 3
    for i in range(3):
        assert win[i][i] == 0.5
        for j in range(3):
            if i != j:
                assert win[i][j] + win[j][i] == pytest.approx(1.0)
    assert scores == pytest.approx([(0.5 + 0.9 + 0.9) / 3, (0.1 + 0.5 + 0.1) / 3, (0.1 + 0.9 + 0.5) / 3])
    with pytest.raises(ValueError, match="probability"):
        CallablePairwiseJudge(lambda p, a, b: 2.0).prefer(["p"], ["a"], ["b"])


def test_judges_load_and_score(tmp_path):
    from dpokit.preference.judges import CallableJudge, build_judge, judge_label, load_function, score_responses

    parity = build_judge("parity")
    assert isinstance(parity, CallableJudge) and judge_label(parity) == "parity"
    assert score_responses(parity, ["number : 0 4 2 . even or odd ?"] * 2, ["it is even", "odd"]) == [1.0, 0.0]
    path = tmp_path / "my_judge.py"
    path.write_text("def words(prompt, response):\n    return len(response.split())\n")
    words = build_judge(f"{path}:words")
    assert score_responses(words, ["p", "p"], ["a b", ""]) == [2.0, 0.0]
    assert load_function("os.path:join") is __import__("os").path.join

    class Batched:
        calls = 0

        def score(self, prompts, responses):
            Batched.calls += 1
            return [len(r) for r in responses]

    judge = Batched()
    assert build_judge(judge) is judge and judge_label(judge) == "Batched"
    assert score_responses(judge, ["p"] * 3, ["a", "bb", ""]) == [1.0, 2.0, 0.0] and Batched.calls == 1
    for bad in ("no_such_judge", f"{path}:missing"):
        with pytest.raises(ValueError):
            build_judge(bad)
    with pytest.raises(FileNotFoundError):
        build_judge("missing_file.py:f")
