"""benchmarks/claims/steps.py --quick: both step-level claims run end to end, with equalised token budgets."""

import pytest

from conftest import load_claim as load


@pytest.mark.slow
def test_steps_claim_quick(tmp_path, capsys):
    record = load("steps").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "claim: UNDECIDED" in out and "(b) OREO policy" in out  # one seed: no interval
    seed = record["per_seed"][0]
    a, b = seed["a"], seed["b"]
    # outcome sampling stops at the first sample that reaches the search's generated tokens (<= 40 more)
    assert a["search_tokens"] <= a["sampled_tokens"] <= a["search_tokens"] + 40
    assert a["step_pairs"] > 0 and a["outcome_pairs"] > 0 and b["lists"] > 0
    for key in ("greedy", "beam"):
        assert 0 <= b[key] <= 1
    again = load("steps").main(["--quick", "--out", str(tmp_path)])
    assert again["per_seed"][0] == seed and again["seconds"] < 5
