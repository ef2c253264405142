"""Small-sample statistics for sweeps: mean, sample standard deviation and a 95% Student-t interval.

``t_quantile_975(df)`` is the 0.975 quantile of Student's t with ``df`` degrees of freedom: a table for
df 1..30 (standard values to three decimals) and, above, the Cornish-Fisher expansion around the
normal quantile (error below 1e-3 at df 31). No SciPy needed.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def describe(values: Sequence[float]) -> Dict[str, Any]:
    """``{mean, std, n, ci95: [low, high], half_width, values}``; std is the sample standard deviation
    (n - 1); with one value the spread and interval are None."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None, "half_width": None, "values": []}
    mean = sum(xs) / n
    std: Optional[float] = None
    ci, half = None, None
    if n > 1:
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"mean": mean, "std": std, "n": n, "ci95": ci, "half_width": half, "values": xs}


def format_interval(stats: Dict[str, Any], digits: int = 3) -> str:
    """``0.812 ± 0.041`` (mean ± half-width of the 95% interval), or the mean alone when n = 1."""
    if stats.get("mean") is None:
        return "-"
    if stats.get("half_width") is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['half_width']:.{digits}f}"
