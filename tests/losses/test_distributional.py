"""AOT (``dpokit.losses.distributional``): values against NumPy sorts, extremes, float64 gradchecks, and
the declaration that its loss is not per example."""




from .references import (
    standard_tests,
    ref_aot, ref_aot_unpaired
)

CASES = [
    ("aot", {}, ref_aot),
    ("aot", {"label_smoothing": 0.1, "beta": 0.1}, ref_aot),
    ("aot_unpaired", {}, ref_aot_unpaired),
]
GRAD_CASES = [("aot", {"beta": 0.5, "label_smoothing": 0.1}), ("aot_unpaired", {"beta": 0.5})]


test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(CASES, GRAD_CASES)
