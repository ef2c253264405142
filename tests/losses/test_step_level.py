"""step_dpo: value vs NumPy, gradcheck, identities with dpo and cdpo, visit-count smoothing."""

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss

from .conftest import make_full_inputs, np_logsig, to_numpy


def with_steps(inputs, seed=0, steps=3):
    """Random step indices: non-decreasing along each completion, starting at 0."""
    gen = torch.Generator().manual_seed(seed)
    for which in ("chosen", "rejected"):
        mask = getattr(inputs, f"{which}_token_mask")
        bumps = (torch.rand(mask.shape, generator=gen) < 0.4).long()
        bumps[:, 0] = 0
        index = bumps.cumsum(-1).clamp(max=steps - 1) * mask.long()
        inputs.token_stats[f"{which}/step_index"] = index
    return inputs


def np_step_dpo(inputs, beta, discount, eps):
    def r(which):
        p = to_numpy(getattr(inputs, f"policy_{which}_token_logps"))
        q = to_numpy(getattr(inputs, f"reference_{which}_token_logps"))
        m = to_numpy(getattr(inputs, f"{which}_token_mask")).astype(float)
        idx = to_numpy(inputs.token_stats[f"{which}/step_index"])
        out = np.zeros(p.shape[0])
        for b in range(p.shape[0]):
            for t in range(p.shape[1]):
                w = 1.0 if idx[b, t] == 0 else discount ** idx[b, t]
                out[b] += w * m[b, t] * (p[b, t] - q[b, t])
        return out
    z = beta * (r("chosen") - r("rejected"))
    return -(1 - eps) * np_logsig(z) - eps * np_logsig(-z)


@pytest.mark.parametrize("seed, beta, discount, smoothing", [(0, 0.1, 1.0, 0.0), (1, 0.5, 0.0, 0.0),
                                                             (2, 1.0, 0.5, 0.2), (3, 2.0, 0.9, 0.5)])
def test_value_matches_numpy(seed, beta, discount, smoothing):
    inputs = with_steps(make_full_inputs(seed=seed), seed)
    out = get_loss("step_dpo", beta=beta, discount=discount, label_smoothing=smoothing)(inputs).loss
    np.testing.assert_allclose(to_numpy(out), np_step_dpo(inputs, beta, discount, smoothing), rtol=1e-10)


def test_conservative_smoothing_from_visits():
    inputs = with_steps(make_full_inputs(seed=5), 5)
    n_w = torch.tensor([10.0, 3.0, 0.0, 1.0], dtype=torch.float64)
    n_l = torch.tensor([2.0, 3.0, 4.0, 0.0], dtype=torch.float64)
    inputs.extras.update(chosen_visits=n_w, rejected_visits=n_l)
    loss = get_loss("step_dpo", beta=0.7, discount=0.8, conservative=True)
    assert set(loss.needs.extras) == {"chosen_visits", "rejected_visits"}
    out = loss(inputs).loss
    conf = 1 / (1 + n_l.numpy() / np.maximum(1, n_w.numpy()))
    eps = np.minimum(1 - conf, 0.5)
    assert eps.tolist() == pytest.approx([1 / 6, 0.5, 0.5, 0.0])
    expected = [np_step_dpo(inputs, 0.7, 0.8, e)[i] for i, e in enumerate(eps)]
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-10)
    del inputs.extras["rejected_visits"]
    with pytest.raises(ValueError, match="rejected_visits"):
        loss(inputs)


@pytest.mark.parametrize("discount, conservative", [(1.0, False), (0.3, False), (0.0, True)])
def test_gradcheck(discount, conservative):
    base = with_steps(make_full_inputs(seed=7), 7)
    base.extras.update(chosen_visits=torch.tensor([4.0, 1.0, 2.0, 0.0], dtype=torch.float64),
                       rejected_visits=torch.tensor([1.0, 1.0, 5.0, 2.0], dtype=torch.float64))
    loss = get_loss("step_dpo", beta=0.8, discount=discount, conservative=conservative)
    tensors = [base.policy_chosen_token_logps.clone().requires_grad_(), base.policy_rejected_token_logps.clone().requires_grad_()]

    def fn(pw, pl):
        return loss(base.replace(policy_chosen_token_logps=pw, policy_rejected_token_logps=pl)).loss

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("discount", [0.0, 0.5, 1.0])
def test_one_step_trajectories_are_dpo(discount):
    inputs = make_full_inputs(seed=11)  # no step indices: every completion is one step
    dpo = get_loss("dpo", beta=0.3)(inputs).loss
    torch.testing.assert_close(get_loss("step_dpo", beta=0.3, discount=discount)(inputs).loss, dpo)
    for which in ("chosen", "rejected"):  # explicit single-step indices: the same
        inputs.token_stats[f"{which}/step_index"] = torch.zeros_like(getattr(inputs, f"{which}_token_mask"), dtype=torch.long)
    torch.testing.assert_close(get_loss("step_dpo", beta=0.3, discount=discount)(inputs).loss, dpo)
    sums_only = inputs.replace(policy_chosen_token_logps=None, policy_rejected_token_logps=None)
    torch.testing.assert_close(get_loss("step_dpo", beta=0.3)(sums_only).loss, dpo)


def test_discount_zero_is_dpo_on_the_first_step():
    inputs = with_steps(make_full_inputs(seed=13), 13)
    first = {}
    for which in ("chosen", "rejected"):
        keep = inputs.token_stats[f"{which}/step_index"] == 0
        for model in ("policy", "reference"):
            first[f"{model}_{which}_logps"] = (getattr(inputs, f"{model}_{which}_token_logps") * keep).sum(-1)
    expected = get_loss("dpo", beta=0.4)(inputs.replace(**first)).loss
    torch.testing.assert_close(get_loss("step_dpo", beta=0.4, discount=0.0)(inputs).loss, expected)


def test_label_smoothing_is_cdpo_and_bad_values_refused():
    inputs = make_full_inputs(seed=17)
    torch.testing.assert_close(get_loss("step_dpo", beta=0.2, label_smoothing=0.2)(inputs).loss,
                               get_loss("cdpo", beta=0.2, eps=0.2)(inputs).loss)
    with pytest.raises(ValueError, match="discount"):
        get_loss("step_dpo", discount=1.5)(inputs)
    with pytest.raises(ValueError, match="label_smoothing"):
        get_loss("step_dpo", label_smoothing=0.7)(inputs)
