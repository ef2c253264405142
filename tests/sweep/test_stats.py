"""eval.stats: mean, sample std and the 95% t-interval against hand computations."""

import math

import pytest

from dpokit.eval.stats import describe, format_interval, t_quantile_975


def test_interval_by_hand():
    s = describe([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (n-1) = 5/3; t(0.975, 3) = 3.182
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["half_width"] == pytest.approx(3.182 * math.sqrt(5 / 3) / 2)
    assert s["ci95"] == pytest.approx([2.5 - 2.05390, 2.5 + 2.05390], abs=1e-4)
    assert s["n"] == 4


def test_three_seeds_by_hand():
    s = describe([0.80, 0.90, 0.85])
    # std = sqrt((0.0025 + 0.0025 + 0) / 2) = 0.05; half = 4.303 * 0.05 / sqrt(3) = 0.124217
    assert s["std"] == pytest.approx(0.05)
    assert s["half_width"] == pytest.approx(0.124217, abs=1e-6)
    assert format_interval(s) == "0.850 ± 0.124"


def test_one_value_and_none():
    assert describe([0.5]) == {"mean": 0.5, "std": None, "n": 1, "ci95": None, "half_width": None, "values": [0.5]}
    assert describe([None, float("nan")])["n"] == 0
    assert format_interval(describe([])) == "-"
    assert format_interval(describe([0.5])) == "0.500"


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021),
                                          (60, 2.000), (120, 1.980), (10000, 1.960)])
def test_t_quantiles(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1.5e-3)


def test_bad_df():
    with pytest.raises(ValueError):
        t_quantile_975(0)
