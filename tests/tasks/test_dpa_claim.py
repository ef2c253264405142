"""The DPA claim in miniature (benchmarks/claims/dpa.py): the task's rewards and its rank correlation, and
the --quick run end to end."""

import json
import math

import pytest

from conftest import load_claim


def test_task_rewards_and_the_asked_proportion():
    from dpokit.tasks.directions import angle_of, build_tokenizer, mix_rewards, y_share

    assert mix_rewards(None, ["x x x y", "", "x z"]) == [[math.sqrt(0.75), 0.5], [0.0, 0.0], [math.sqrt(0.5), 0.0]]
    assert y_share("x y y y") == 0.75 and y_share("") == 0.0
    # on the quarter circle the best answer for v = (cos t, sin t) has y-share sin^2 t: check by enumeration
    for theta in (10, 30, 60, 80):
        v = (math.cos(math.radians(theta)), math.sin(math.radians(theta)))
        answers = [" ".join(["y"] * k + ["x"] * (100 - k)) for k in range(101)]
        best = max(answers, key=lambda a: sum(w * r for w, r in zip(v, mix_rewards(None, [a])[0])))
        assert abs(y_share(best) - math.sin(math.radians(theta)) ** 2) <= 0.01
    assert angle_of(1.0, 1.0) == pytest.approx(45.0)
    tokens = build_tokenizer().tokenize("rating = x*97 + y*3.\n\nmix : a b c .")
    assert tokens[2:9] == ["x", "*", "9", "7", "+", "y", "*"] and "<unk>" not in tokens


def test_spearman_matches_an_independent_computation():
    claim = load_claim("dpa")
    assert claim.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert claim.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert claim.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    # ties: average ranks, then Pearson of the ranks (rank of [1, 2, 2, 3] = [1, 2.5, 2.5, 4])
    a, b = [1, 2, 3, 4], [1, 2, 2, 3]
    ra, rb = [1, 2, 3, 4], [1, 2.5, 2.5, 4]
    ma, mb = 2.5, 2.5
    expected = sum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / math.sqrt(
        sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    assert claim.spearman(a, b) == pytest.approx(expected)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    record = load_claim("dpa").main(["--quick", "--out", str(tmp_path)])
    assert record["quick"] and record["seeds"] == [0]
    saved = json.loads((tmp_path / "claim.json").read_text())
    dpa, rps = saved["results"]["dpa"]["0"], saved["results"]["rps_arm"]["0"]
    assert -1.0 <= dpa["spearman"] <= 1.0 and 0.0 <= dpa["share_error"] <= 1.0
    assert set(f"share_{a:g}" for a in (0, 45, 90)) <= set(dpa)
    assert 0.0 <= rps["win"] <= 1.0 and "UNDECIDED" in record["output"]
    summary = json.loads((tmp_path / "seed0" / "dpa" / "summary.json").read_text())
    assert len(summary["per_round"]) == 2 and all(m["strategy"] == "dpa_rsf" for m in summary["per_round"])
