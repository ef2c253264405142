"""Regularised DPO (``dpokit.losses.regularized``: RPO, Flex-DPO, SFT-DPO, phi-DPO, and ``sft``): values
against NumPy, extremes and float64 gradchecks."""




from .references import (
    standard_tests,
    ref_flex, ref_phi, ref_rpo, ref_sft_dpo
)

CASES = [
    ("rpo", {}, ref_rpo),
    ("rpo", {"variant": "mean", "eta": 0.2, "beta": 0.5}, ref_rpo),
    ("flex_dpo", {}, ref_flex),
    ("sft_dpo", {"gamma": 0.3}, ref_sft_dpo),
    ("phi_dpo", {}, ref_phi),
    ("phi_dpo", {"gamma": 0.5, "sft_weight": 1.0}, ref_phi),
]
GRAD_CASES = [("rpo", {"beta": 0.3}), ("rpo", {"variant": "mean"}), ("flex_dpo", {}), ("sft_dpo", {}),
              ("phi_dpo", {"beta": 0.5}), ("phi_dpo", {"gamma": 0.7, "sft_weight": 1.0})]


test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(CASES, GRAD_CASES)
