"""Multi-objective losses (``dpokit.losses.multi_objective``: MODPO, Sem-DPO): values against NumPy and
their reduction to DPO."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss

from .references import (
    B, _r, case_ids, check_gradcheck, check_value_extreme, check_value_random, extreme_inputs, np_logsig, np_sig,
    np_view, seq_inputs
)


def test_modpo_value_and_reduction_to_dpo():
    x = seq_inputs(5)
    g = torch.Generator().manual_seed(2)
    mw, ml = torch.randn(B, 2, generator=g, dtype=torch.float64), torch.randn(B, 2, generator=g, dtype=torch.float64)
    x.extras = {"modpo_chosen_scores": mw, "modpo_rejected_scores": ml}
    w = (0.5, 0.3, 0.2)
    d = np_view(x)
    rw, rl = _r(d)
    big_w = (0.1 * rw - mw.numpy() @ np.array(w[1:])) / w[0]
    big_l = (0.1 * rl - ml.numpy() @ np.array(w[1:])) / w[0]
    np.testing.assert_allclose(get_loss("modpo", weights=w)(x).loss.numpy(), -np_logsig(big_w - big_l), rtol=1e-10)
    np.testing.assert_allclose(get_loss("modpo", weights=w, loss_type="hinge")(x).loss.numpy(),
                               np.maximum(0, 1 - (big_w - big_l)), rtol=1e-10)
    x.extras = {"modpo_chosen_scores": mw[:, :1], "modpo_rejected_scores": ml[:, :1]}
    torch.testing.assert_close(get_loss("modpo", weights=(1.0, 0.0))(x).loss, get_loss("dpo")(x).loss)
    with pytest.raises(ValueError):
        get_loss("modpo", weights=w)(x)  # 2 margin weights, 1 score column


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sem_dpo_value(seed):
    x = seq_inputs(seed)
    w = torch.exp(-torch.rand(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    x.extras = {"sem_weight": w}
    rw, rl = _r(np_view(x))
    out = get_loss("sem_dpo", beta=0.3)(x)
    np.testing.assert_allclose(out.loss.numpy(), -w.numpy() * np_logsig(0.3 * (rw - rl)), rtol=1e-10)
    x.extras = {"sem_weight": torch.ones(B, dtype=torch.float64)}
    torch.testing.assert_close(get_loss("sem_dpo", beta=0.3)(x).loss, get_loss("dpo", beta=0.3)(x).loss)
