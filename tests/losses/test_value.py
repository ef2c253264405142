"""oreo: value vs a loop-by-loop NumPy computation at several inputs and levels, float64 gradcheck, the
soft Bellman fixed point (zero loss), one-token steps = token level, stop-gradients between the models."""

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss

from .conftest import make_full_inputs

LEVELS = ("token", "step", "response")


def with_steps(inputs, seed=0):
    """Random step boundaries (token_step: nondecreasing step index, -1 outside the response)."""
    gen = torch.Generator().manual_seed(seed + 11)
    mask = inputs.list_token_mask
    B, K, T = mask.shape
    jumps = (torch.rand(B, K, T, generator=gen) < 0.4).long()
    jumps[..., 0] = 0
    index = torch.cumsum(jumps, -1)
    extras = dict(inputs.extras, token_step=torch.where(mask, index, -1).to(torch.float64))
    return inputs.replace(extras=extras)


def np_oreo(inputs, beta, alpha, value_weight, level):
    lp = inputs.list_policy_token_logps.detach().numpy()
    lr = inputs.list_reference_token_logps.detach().numpy()
    V = inputs.extras["list_values"].detach().numpy()
    R = inputs.list_scores.detach().numpy()
    tmask = inputs.list_token_mask.numpy()
    rows = inputs.list_mask.numpy()
    steps = inputs.extras.get("token_step")
    steps = None if steps is None else steps.numpy()
    B, K, T = lp.shape
    out = np.zeros(B)
    for b in range(B):
        total, n = 0.0, 0
        for k in range(K):
            if not rows[b, k]:
                continue
            L = int(tmask[b, k].sum())
            d = [lp[b, k, t] - lr[b, k, t] for t in range(L)]
            S = [sum(d[t:]) for t in range(L)] + [0.0]
            v = V[b, k, :L]
            r = R[b, k]
            if level == "step":
                starts = [t for t in range(L) if t == 0 or steps[b, k, t] != steps[b, k, t - 1]]
            else:
                starts = list(range(L))
            value = np.mean([(v[t] - r + beta * S[t]) ** 2 for t in starts])
            if level == "token":
                policy = np.mean([(v[t] - r + beta * d[t] + beta * S[t + 1]) ** 2 for t in range(L)])
            elif level == "step":
                ends = starts[1:] + [L]
                policy = np.mean([(v[i] - r + beta * sum(d[i:j]) + beta * S[j]) ** 2 for i, j in zip(starts, ends)])
            else:
                policy = (v[0] - r + beta * S[0]) ** 2
            kl = np.mean([np.exp(-x) + x - 1 for x in d])
            total += value_weight * value + policy + alpha * kl
            n += 1
        out[b] = total / max(n, 1)
    return out


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta, alpha, value_weight", [(0.03, 0.01, 1.0), (0.5, 0.3, 0.5), (2.0, 0.0, 2.0)])
def test_value_matches_numpy(level, seed, beta, alpha, value_weight):
    inputs = with_steps(make_full_inputs(seed=seed), seed)
    got = get_loss("oreo", beta=beta, alpha=alpha, value_weight=value_weight, level=level)(inputs).loss
    np.testing.assert_allclose(got.numpy(), np_oreo(inputs, beta, alpha, value_weight, level), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("level", LEVELS)
def test_gradcheck(level):
    """float64 gradcheck where no stop-gradient hides a dependence: the value loss in the values (every
    level), and the whole loss in the policy log-probs at the response level without the value loss (its
    S_0 carries the gradient)."""
    from dpokit.losses.value import oreo_terms

    base = with_steps(make_full_inputs(batch=2, T=4, seed=3), 3)
    mask = base.list_token_mask & base.list_mask.unsqueeze(-1)
    d = base.list_policy_token_logps - base.list_reference_token_logps
    values = base.extras["list_values"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: oreo_terms(v, d, base.list_scores, mask, 0.7, level, base.extras["token_step"])[0], (values,))
    if level == "response":
        policy_only = get_loss("oreo", beta=0.7, alpha=0.2, value_weight=0.0, level=level)
        lp = base.list_policy_token_logps.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: policy_only(base.replace(list_policy_token_logps=x)).loss, (lp,))


@pytest.mark.parametrize("level", ["token", "step"])
def test_policy_gradient_matches_numpy(level):
    """d L / d lp_t with the stop-gradients: token level ``2 beta (V_t - R + beta d_t + beta S_{t+1}) / T``,
    step level ``2 beta (V_i - R + beta sum_step d + beta S_j) / #steps`` for every token of the step,
    plus ``alpha (1 - exp(-d_t)) / T`` from the regulariser; one group, one response."""
    beta, alpha = 0.6, 0.25
    base = with_steps(make_full_inputs(batch=4, T=6, seed=7), 7)
    lp = base.list_policy_token_logps.clone().requires_grad_(True)
    out = get_loss("oreo", beta=beta, alpha=alpha, level=level)(base.replace(list_policy_token_logps=lp))
    out.loss[1].backward()
    d = (base.list_policy_token_logps - base.list_reference_token_logps).detach().numpy()[1]
    V = base.extras["list_values"].numpy()[1]
    R = base.list_scores.numpy()[1]
    tmask, rows = base.list_token_mask.numpy()[1], base.list_mask.numpy()[1]
    steps = base.extras["token_step"].numpy()[1]
    expected = np.zeros_like(d)
    n = rows.sum()
    for k in range(d.shape[0]):
        if not rows[k]:
            continue
        L = int(tmask[k].sum())
        S = [sum(d[k, t:L]) for t in range(L)] + [0.0]
        for t in range(L):
            expected[k, t] += alpha * (1 - np.exp(-d[k, t])) / L / n
        if level == "token":
            for t in range(L):
                expected[k, t] += 2 * beta * (V[k, t] - R[k] + beta * d[k, t] + beta * S[t + 1]) / L / n
        else:
            starts = [t for t in range(L) if t == 0 or steps[k, t] != steps[k, t - 1]]
            for i, j in zip(starts, starts[1:] + [L]):
                g = 2 * beta * (V[k, i] - R[k] + beta * sum(d[k, i:j]) + beta * S[j]) / len(starts) / n
                expected[k, i:j] += g
    np.testing.assert_allclose(lp.grad.numpy()[1], expected, rtol=1e-10, atol=1e-12)
    assert torch.all(lp.grad[[0, 2, 3]] == 0)


def bellman_inputs(seed, beta):
    """Inputs whose values solve the soft Bellman equation exactly: V(s_t) = R - beta S_t."""
    inputs = with_steps(make_full_inputs(seed=seed), seed)
    mask = inputs.list_token_mask.to(torch.float64)
    d = (inputs.list_policy_token_logps - inputs.list_reference_token_logps) * mask
    S = torch.flip(torch.cumsum(torch.flip(d, [-1]), -1), [-1])
    values = (inputs.list_scores.unsqueeze(-1) - beta * S) * mask
    return inputs.replace(extras=dict(inputs.extras, list_values=values))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_soft_bellman_solution_has_zero_loss(level, seed):
    beta = 0.4
    inputs = bellman_inputs(seed, beta)
    out = get_loss("oreo", beta=beta, alpha=0.0, level=level)(inputs)
    assert float(out.metrics["oreo/value_loss"]) < 1e-20
    assert float(out.metrics["oreo/policy_loss"]) < 1e-20
    torch.testing.assert_close(out.loss, torch.zeros_like(out.loss), atol=1e-18, rtol=0)
    # one value off by c at every state: value loss c^2 at every level
    shifted = inputs.replace(extras=dict(inputs.extras, list_values=inputs.extras["list_values"] + 0.5))
    out = get_loss("oreo", beta=beta, alpha=0.0, level=level)(shifted)
    torch.testing.assert_close(out.metrics["oreo/value_loss"], torch.tensor(0.25, dtype=torch.float64))


def test_one_token_steps_are_the_token_level():
    inputs = make_full_inputs(seed=4)
    mask = inputs.list_token_mask
    index = torch.arange(mask.shape[-1]).expand_as(mask)
    stepped = inputs.replace(extras=dict(inputs.extras, token_step=torch.where(mask, index, -1).to(torch.float64)))
    token = get_loss("oreo", beta=0.3, level="token")(inputs).loss
    step = get_loss("oreo", beta=0.3, level="step")(stepped).loss
    torch.testing.assert_close(step, token)


def test_one_step_responses_are_the_response_level_policy():
    inputs = make_full_inputs(seed=5)
    mask = inputs.list_token_mask
    one = inputs.replace(extras=dict(inputs.extras, token_step=torch.where(mask, 0, -1).to(torch.float64)))
    step = get_loss("oreo", beta=0.3, alpha=0.0, level="step")(one)
    response = get_loss("oreo", beta=0.3, alpha=0.0, level="response")(inputs)
    torch.testing.assert_close(step.metrics["oreo/policy_loss"], response.metrics["oreo/policy_loss"])


@pytest.mark.parametrize("level", LEVELS)
def test_each_model_gets_only_its_own_loss(level):
    inputs = with_steps(make_full_inputs(seed=6), 6)
    lp = inputs.list_policy_token_logps.clone().requires_grad_(True)
    values = inputs.extras["list_values"].clone().requires_grad_(True)
    g_lp, = torch.autograd.grad(_value_only(inputs, lp, values, level), lp, allow_unused=True)
    assert g_lp is None or torch.all(g_lp == 0)
    g_v, = torch.autograd.grad(_policy_only(inputs, lp, values, level), values, allow_unused=True)
    assert g_v is None or torch.all(g_v == 0)


def _value_only(inputs, lp, values, level):
    from dpokit.losses.value import oreo_terms

    mask = inputs.list_token_mask & inputs.list_mask.unsqueeze(-1)
    value, _ = oreo_terms(values, lp - inputs.list_reference_token_logps, inputs.list_scores, mask, 0.3, level,
                          inputs.extras["token_step"])
    return value.sum()


def _policy_only(inputs, lp, values, level):
    from dpokit.losses.value import oreo_terms

    mask = inputs.list_token_mask & inputs.list_mask.unsqueeze(-1)
    _, policy = oreo_terms(values, lp - inputs.list_reference_token_logps, inputs.list_scores, mask, 0.3, level,
                           inputs.extras["token_step"])
    return policy.sum()


def test_bad_settings_are_refused():
    inputs = make_full_inputs()
    with pytest.raises(ValueError, match="level must be one of"):
        get_loss("oreo", level="episode")(inputs)
    with pytest.raises(ValueError, match="beta must be > 0"):
        get_loss("oreo", beta=0.0)(inputs)
    no_values = inputs.replace(extras={k: v for k, v in inputs.extras.items() if k != "list_values"})
    with pytest.raises(ValueError, match="list_values"):
        get_loss("oreo")(no_values)
    with pytest.raises(ValueError, match="token_step"):
        get_loss("oreo", level="step")(inputs.replace(extras={"list_values": inputs.extras["list_values"]}))
