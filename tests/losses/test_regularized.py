"""Regularised DPO (``dpokit.losses.regularized``: RPO, Flex-DPO, SFT-DPO, phi-DPO, and ``sft``): values
against NumPy, extremes and float64 gradchecks."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss

from .references import (
    B, _r, case_ids, check_gradcheck, check_value_extreme, check_value_random, extreme_inputs, np_logsig, np_sig,
    np_view, seq_inputs, ref_flex, ref_phi, ref_rpo, ref_sft_dpo
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
