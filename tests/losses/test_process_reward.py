"""OPRL: step advantages against loop-based NumPy references, the PRM's trajectory DPO (value, gradient
reaching the PRM), and the PPO-clip policy loss on step advantages."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss
from dpokit.losses.policy_gradient import rloo_advantages
from dpokit.losses.process_reward import (batch_norm_step_rewards, oprl_advantages, step_advantages,
                                          token_advantages)

from .test_policy_gradient import B, K, T, group_inputs, npv

S = 3


def step_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = group_inputs(seed, binary=True, old_noise=0.3)
    n_steps = torch.randint(1, S + 1, (B, K), generator=g)
    step_mask = (torch.arange(S).view(1, 1, S) < n_steps.unsqueeze(-1)) & x.list_mask.unsqueeze(-1)
    step_rewards = torch.randn(B, K, S, generator=g, dtype=torch.float64) * step_mask
    # tokens split into consecutive steps: token t belongs to step min(t * n / len, n - 1)
    lengths = x.list_token_mask.sum(-1, keepdim=True).clamp_min(1)
    t = torch.arange(T).view(1, 1, T)
    token_step = torch.minimum(t * n_steps.unsqueeze(-1) // lengths, n_steps.unsqueeze(-1) - 1)
    token_step = torch.where(x.list_token_mask, token_step, -1).double()
    x.extras.update(step_rewards=step_rewards, step_mask=step_mask, token_step=token_step,
                    list_num_steps=n_steps.double())
    return x


def ref_step_advantages(r, m, traj, baseline):
    out = np.zeros_like(r)
    for b in range(r.shape[0]):
        if baseline == "first":
            vals = [r[b, g, 0] for g in range(r.shape[1]) if traj[b, g] and m[b, g, 0]]
        else:
            vals = [r[b, g, s] for g in range(r.shape[1]) for s in range(r.shape[2]) if traj[b, g] and m[b, g, s]]
        n = len(vals)
        mean = sum(vals) / n if n else 0.0
        for g in range(r.shape[1]):
            for s in range(r.shape[2]):
                if traj[b, g] and m[b, g, s] and n > 1:
                    out[b, g, s] = r[b, g, s] * n / (n - 1) - mean * n / (n - 1)
    return out


def ref_oprl_advantages(x, w=1.0, baseline="first", normalize="batch_norm", process_only=False):
    R, traj = npv(x.list_scores), npv(x.list_mask)
    r, m = npv(x.extras["step_rewards"]), npv(x.extras["step_mask"])
    if normalize == "batch_norm":
        scale = 0.0
        for b in range(r.shape[0]):
            for g in range(r.shape[1]):
                for s in range(r.shape[2]):
                    if m[b, g, s]:
                        scale = max(scale, abs(sum(r[b, g, u] for u in range(s, r.shape[2]) if m[b, g, u])))
        r = r / scale
    a_s = ref_step_advantages(r, m, traj, baseline)
    if process_only:
        return a_s
    out = np.zeros_like(r)
    for b in range(R.shape[0]):
        idx = [g for g in range(R.shape[1]) if traj[b, g]]
        for g in idx:
            others = [R[b, j] for j in idx if j != g]
            a_e = R[b, g] - sum(others) / len(others) if others else 0.0
            for s in range(r.shape[2]):
                if m[b, g, s]:
                    out[b, g, s] = a_e + w * a_s[b, g, s]
    return out


@pytest.mark.parametrize("hp", [{}, {"step_baseline": "all"}, {"step_weight": 0.3, "normalize": "none"},
                                {"process_only": True}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_advantages_against_numpy(hp, seed):
    x = step_data(seed)
    got = oprl_advantages(x.list_scores, x.list_mask, x.extras["step_rewards"], x.extras["step_mask"], **hp)
    ref = ref_oprl_advantages(x, w=hp.get("step_weight", 1.0), baseline=hp.get("step_baseline", "first"),
                              normalize=hp.get("normalize", "batch_norm"), process_only=hp.get("process_only", False))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_zero_step_weight_is_the_episode_rloo_advantage_on_every_step():
    x = step_data(3)
    adv = oprl_advantages(x.list_scores, x.list_mask, x.extras["step_rewards"], x.extras["step_mask"], step_weight=0.0)
    expected = rloo_advantages(x.list_scores, x.list_mask).unsqueeze(-1) * x.extras["step_mask"]
    assert torch.allclose(adv, expected)


def test_first_step_baseline_uses_only_first_steps():
    r = torch.tensor([[[1.0, 10.0], [3.0, -10.0]]], dtype=torch.float64)  # 1 task, 2 trajectories, 2 steps
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    # first steps 1 and 3: mean 2, n = 2 -> A = 2 (r - 2)
    assert torch.allclose(step_advantages(r, m, "first"), 2 * (r - 2.0))
    # all steps: mean 1, n = 4 -> A = 4/3 (r - 1)
    assert torch.allclose(step_advantages(r, m, "all"), 4 / 3 * (r - 1.0))


def test_batch_norm_divides_by_the_largest_return():
    r = torch.tensor([[[1.0, 2.0], [-4.0, 0.5]]], dtype=torch.float64)
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    assert torch.allclose(batch_norm_step_rewards(r, m), r / 3.5)
    assert torch.equal(batch_norm_step_rewards(torch.zeros_like(r), m), torch.zeros_like(r))


def test_token_advantages_broadcast_over_each_step():
    adv = torch.tensor([[[1.0, -2.0]]])
    token_step = torch.tensor([[[0, 0, 1, -1]]])
    assert token_advantages(adv, token_step).tolist() == [[[1.0, 1.0, -2.0, 0.0]]]


def ref_prm(x, beta=0.05, score="step_mean"):
    lp, lr, R, m = npv(x.list_policy_logps), npv(x.list_reference_logps), npv(x.list_scores), npv(x.list_mask)
    n = npv(x.extras["list_num_steps"])
    out = []
    for b in range(lp.shape[0]):
        q = {k: beta * (lp[b, k] - lr[b, k]) / (n[b, k] if score == "step_mean" else 1.0)
             for k in range(lp.shape[1]) if m[b, k]}
        terms = [math.log1p(math.exp(-(q[i] - q[j]))) for i in q for j in q if R[b, i] > R[b, j]]
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return np.array(out)


@pytest.mark.parametrize("hp", [{}, {"score": "sum", "beta": 0.5}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prm_loss_against_numpy(hp, seed):
    x = step_data(seed)
    np.testing.assert_allclose(get_loss("oprl_prm", **hp)(x).loss.numpy(), ref_prm(x, **hp), rtol=1e-9, atol=1e-12)


def test_prm_gradcheck():
    x = step_data(4)
    loss = get_loss("oprl_prm", beta=0.5)
    assert torch.autograd.gradcheck(lambda v: loss(x.replace(list_policy_logps=v)).loss,
                                    (x.list_policy_logps.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_prm_parameters_actually_change():
    # a tiny PRM: per-trajectory logits; the released update detached its log-ratios, this one must not
    torch.manual_seed(0)
    prm = torch.nn.Parameter(torch.zeros(2, 4, dtype=torch.float64))
    before = prm.detach().clone()
    opt = torch.optim.SGD([prm], lr=1.0)
    x = LossInputs(list_reference_logps=torch.full((2, 4), -3.0, dtype=torch.float64),
                   list_scores=torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64),
                   list_mask=torch.ones(2, 4, dtype=torch.bool),
                   extras={"list_num_steps": torch.full((2, 4), 2.0, dtype=torch.float64)})
    for _ in range(3):
        opt.zero_grad()
        out = get_loss("oprl_prm")(x.replace(list_policy_logps=-3.0 + prm))
        out.loss.mean().backward()
        opt.step()
    assert not torch.allclose(prm.detach(), before)
    success = x.list_scores.bool()
    assert (prm.detach()[success] > 0).all() and (prm.detach()[~success] < 0).all()


def ref_oprl_loss(x, clip_eps=0.2, **hp):
    adv = ref_oprl_advantages(x, w=hp.get("step_weight", 1.0), baseline=hp.get("step_baseline", "first"),
                              process_only=hp.get("process_only", False))
    lp, old, tm = npv(x.list_policy_token_logps), npv(x.extras["list_old_token_logps"]), npv(x.list_token_mask)
    ts = npv(x.extras["token_step"]).astype(int)
    out = []
    for b in range(lp.shape[0]):
        total, count = 0.0, 0
        for k in range(lp.shape[1]):
            for t in range(lp.shape[2]):
                if tm[b, k, t]:
                    a = adv[b, k, ts[b, k, t]]
                    rho = math.exp(lp[b, k, t] - old[b, k, t])
                    total += max(-a * rho, -a * min(max(rho, 1 - clip_eps), 1 + clip_eps))
                    count += 1
        out.append(total / count)
    return np.array(out)


@pytest.mark.parametrize("hp", [{}, {"step_baseline": "all", "step_weight": 0.5}, {"process_only": True}])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_against_numpy(hp, seed):
    x = step_data(seed)
    np.testing.assert_allclose(get_loss("oprl", **hp)(x).loss.numpy(), ref_oprl_loss(x, **hp), rtol=1e-9, atol=1e-12)


def test_policy_loss_gradcheck():
    x = step_data(5)
    x.extras["list_old_token_logps"] = x.list_policy_token_logps + 0.01 * x.list_token_mask
    loss = get_loss("oprl")
    assert torch.autograd.gradcheck(lambda v: loss(x.replace(list_policy_token_logps=v)).loss,
                                    (x.list_policy_token_logps.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_missing_step_data_is_named():
    x = step_data(0)
    del x.extras["token_step"]
    with pytest.raises(ValueError, match="token_step"):
        get_loss("oprl")(x)
    with pytest.raises(ValueError, match="step baseline must be one of"):
        step_advantages(torch.zeros(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool), "last")
