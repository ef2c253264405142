"""f-DPO (``dpokit.losses.divergence``): values against NumPy written with ``u = pi/pi_ref`` itself,
extremes and float64 gradchecks."""


import torch

from dpokit.losses import get_loss

from .references import (
    standard_tests,
    extreme_inputs, ref_fdpo
)

CASES = [
    ("fdpo", {}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "forward_kl"}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "js_divergence"}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.5}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.3}, ref_fdpo),
]
GRAD_CASES = [("fdpo", {"f_divergence_type": "forward_kl", "beta": 0.5}),
              ("fdpo", {"f_divergence_type": "js_divergence", "beta": 0.5}),
              ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.3, "beta": 0.5})]


test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(CASES, GRAD_CASES)


def test_fdpo_float32_huge_ratios_are_finite():
    # exponents far beyond fp32's range are clamped (TRL clamps at 80 for fp32)
    x = extreme_inputs(0.1, 5000.0, dtype=torch.float32)
    for kind in ("forward_kl", "alpha_divergence", "js_divergence"):
        out = get_loss("fdpo", f_divergence_type=kind)(x).loss
        assert torch.isfinite(out).all(), kind
