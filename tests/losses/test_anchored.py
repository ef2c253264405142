"""Anchored losses (``dpokit.losses.anchored``: NCA, APO, SPPO, Cal-DPO, pairwise BCO): values against
NumPy, extremes, the running mean's state, and float64 gradchecks."""


import numpy as np
import torch

from dpokit.losses import get_loss

from .references import (
    standard_tests,
    B, _r, np_logsig, np_view, seq_inputs, ref_apo_down, ref_apo_zero, ref_cal_dpo, ref_nca, ref_sppo_hard
)

CASES = [
    ("nca", {}, ref_nca),
    ("sppo_hard", {}, ref_sppo_hard),
    ("apo_zero", {}, ref_apo_zero),
    ("apo_down", {}, ref_apo_down),
    ("cal_dpo", {}, ref_cal_dpo),
    ("cal_dpo", {"calibration_weight": 1.0, "length_normalize": True, "beta": 0.1}, ref_cal_dpo),
]
GRAD_CASES = [("nca", {"beta": 0.3}), ("sppo_hard", {"beta": 0.2}), ("apo_zero", {"beta": 0.5}),
              ("apo_down", {"beta": 0.5}), ("cal_dpo", {"beta": 0.2})]


test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(CASES, GRAD_CASES)


def test_bco_pair_running_mean_value_and_state():
    beta = 0.01
    x1, x2 = seq_inputs(0), seq_inputs(1)
    d1, d2 = np_view(x1), np_view(x2)
    loss = get_loss("bco_pair")
    out1 = loss(x1).loss.numpy()
    rw1, rl1 = _r(d1)
    delta1 = np.mean(np.concatenate([beta * rw1, beta * rl1]))
    np.testing.assert_allclose(out1, -np_logsig(beta * rw1 - delta1) - np_logsig(-(beta * rl1 - delta1)), rtol=1e-10)
    state = loss.state_dict()
    out2 = loss(x2).loss.numpy()
    rw2, rl2 = _r(d2)
    delta2 = np.mean(np.concatenate([beta * rw1, beta * rl1, beta * rw2, beta * rl2]))
    np.testing.assert_allclose(out2, -np_logsig(beta * rw2 - delta2) - np_logsig(-(beta * rl2 - delta2)), rtol=1e-10)
    # evaluation does not move the mean
    loss.training = False
    before = loss.state_dict()
    loss(x1)
    assert loss.state_dict() == before
    # a resumed loss continues exactly
    resumed = get_loss("bco_pair")
    resumed.load_state_dict(state)
    np.testing.assert_allclose(resumed(x2).loss.numpy(), out2, rtol=1e-12)


def test_bco_pair_shift_free_form():
    x = seq_inputs(3)
    d = np_view(x)
    rw, rl = _r(d)
    got = get_loss("bco_pair", running_mean=False, beta=0.2)(x).loss.numpy()
    np.testing.assert_allclose(got, -np_logsig(0.2 * rw) - np_logsig(-0.2 * rl), rtol=1e-10)


def test_sppo_soft_value_and_hard_relation():
    x = seq_inputs(4)
    g = torch.Generator().manual_seed(9)
    pw, pl = torch.rand(B, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)
    x.extras = {"win_prob_chosen": pw, "win_prob_rejected": pl}
    d = np_view(x)
    rw, rl = _r(d)
    beta = 1e-3
    ref = 0.5 * ((rw - (pw.numpy() - 0.5) / beta) ** 2 + (rl - (pl.numpy() - 0.5) / beta) ** 2)
    np.testing.assert_allclose(get_loss("sppo")(x).loss.numpy(), ref, rtol=1e-10)
    x.extras = {"win_prob_chosen": torch.ones(B, dtype=torch.float64),
                "win_prob_rejected": torch.zeros(B, dtype=torch.float64)}
    torch.testing.assert_close(get_loss("sppo")(x).loss, 0.5 * get_loss("sppo_hard")(x).loss)


def test_gradcheck_bco_pair_in_eval_mode():
    x = seq_inputs(12)
    loss = get_loss("bco_pair", beta=0.3)
    loss(x)  # one training update, then freeze the running mean
    loss.training = False
    pw = x.policy_chosen_logps.clone().requires_grad_()
    pl = x.policy_rejected_logps.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss, (pw, pl))
