"""AOT (``dpokit.losses.distributional``): values against NumPy sorts, extremes, float64 gradchecks, and
the declaration that its loss is not per example."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss

from .references import (
    B, _r, case_ids, check_gradcheck, check_value_extreme, check_value_random, extreme_inputs, np_logsig, np_sig,
    np_view, seq_inputs, ref_aot, ref_aot_unpaired
)

CASES = [
    ("aot", {}, ref_aot),
    ("aot", {"label_smoothing": 0.1, "beta": 0.1}, ref_aot),
    ("aot_unpaired", {}, ref_aot_unpaired),
]
GRAD_CASES = [("aot", {"beta": 0.5, "label_smoothing": 0.1}), ("aot_unpaired", {"beta": 0.5})]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    check_value_random(name, hp, ref, seed)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_extreme_margin(name, hp, ref, dtype):
    check_value_extreme(name, hp, ref, dtype)


@pytest.mark.parametrize("name,hp", GRAD_CASES, ids=case_ids(GRAD_CASES))
def test_gradcheck(name, hp):
    check_gradcheck(name, hp)
