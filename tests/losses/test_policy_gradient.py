"""Policy-gradient losses (REINFORCE, RLOO, GRPO): values against loop-based NumPy references at several
inputs, float64 gradcheck, and the identities between them."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss
from dpokit.losses.policy_gradient import (aggregate, clipped_surrogate, grpo_advantages, k3_kl,
                                           reinforce_advantages, rloo_advantages)

B, K, T = 4, 4, 5


def group_inputs(seed, binary=False, dtype=torch.float64, old_noise=0.05):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, K), generator=g)
    tmask = torch.arange(T).view(1, 1, T) < lengths.unsqueeze(-1)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, -1] = False  # one short group
    mask[1, -2:] = False
    tmask = tmask & mask.unsqueeze(-1)
    tok = -(0.05 + 2.0 * torch.rand(B, K, T, generator=g, dtype=dtype)) * tmask
    ref = -(0.05 + 2.0 * torch.rand(B, K, T, generator=g, dtype=dtype)) * tmask
    old = (tok + old_noise * torch.randn(B, K, T, generator=g, dtype=dtype)) * tmask
    if binary:
        scores = (torch.rand(B, K, generator=g) > 0.5).to(dtype)
    else:
        scores = torch.randn(B, K, generator=g, dtype=dtype)
    return LossInputs(list_policy_logps=tok.sum(-1), list_reference_logps=ref.sum(-1),
                      list_lengths=lengths.to(dtype), list_scores=scores, list_mask=mask,
                      list_policy_token_logps=tok, list_reference_token_logps=ref, list_token_mask=tmask,
                      extras={"list_old_token_logps": old, "list_old_logps": old.sum(-1)})


def npv(t):
    return t.detach().numpy().astype(np.float64)


# ---- loop-based NumPy references ---------------------------------------------------------------
def ref_reinforce(x, baseline="mean", kl_coef=0.0):
    lp, lr, R, m = npv(x.list_policy_logps), npv(x.list_reference_logps), npv(x.list_scores), npv(x.list_mask)
    out = []
    for b in range(lp.shape[0]):
        idx = [k for k in range(lp.shape[1]) if m[b, k]]
        r = [R[b, k] - kl_coef * (lp[b, k] - lr[b, k]) for k in idx]
        base = sum(r) / len(r) if baseline == "mean" else 0.0
        out.append(-sum((ri - base) * lp[b, k] for ri, k in zip(r, idx)) / len(idx))
    return np.array(out)


def ref_rloo(x, kl_coef=0.0):
    lp, lr, R, m = npv(x.list_policy_logps), npv(x.list_reference_logps), npv(x.list_scores), npv(x.list_mask)
    out = []
    for b in range(lp.shape[0]):
        idx = [k for k in range(lp.shape[1]) if m[b, k]]
        r = [R[b, k] - kl_coef * (lp[b, k] - lr[b, k]) for k in idx]
        n = len(r)
        total = 0.0
        for i, k in enumerate(idx):
            others = [r[j] for j in range(n) if j != i]
            adv = r[i] - sum(others) / len(others) if others else 0.0
            total += adv * lp[b, k]
        out.append(-total / n)
    return np.array(out)


def ref_grpo(x, beta=0.04, clip_eps=0.2, clip_eps_high=-1.0, level="token", aggregation="seq_mean_token_mean",
             scale_rewards=True, eps=1e-6, on_policy=False):
    hi = clip_eps if clip_eps_high < 0 else clip_eps_high
    R, m = npv(x.list_scores), npv(x.list_mask)
    if level == "token":
        lp, lr, tm = npv(x.list_policy_token_logps), npv(x.list_reference_token_logps), npv(x.list_token_mask)
        old = lp if on_policy else npv(x.extras["list_old_token_logps"])
    else:
        lp, lr = npv(x.list_policy_logps)[..., None], npv(x.list_reference_logps)[..., None]
        tm = npv(x.list_mask)[..., None]
        old = lp if on_policy else npv(x.extras["list_old_logps"])[..., None]
        aggregation = "seq_mean_token_mean"
    out = []
    for b in range(R.shape[0]):
        idx = [k for k in range(R.shape[1]) if m[b, k]]
        r = np.array([R[b, k] for k in idx])
        adv = r - r.mean()
        if scale_rewards:
            sd = math.sqrt(((r - r.mean()) ** 2).sum() / (len(r) - 1)) if len(r) > 1 else 0.0
            adv = adv / (sd + eps)
        per_resp, tokens = [], []
        for a, k in zip(adv, idx):
            s = 0.0
            n_t = 0
            for t in range(lp.shape[2]):
                if not tm[b, k, t]:
                    continue
                rho = math.exp(lp[b, k, t] - old[b, k, t])
                term = max(-a * rho, -a * min(max(rho, 1 - clip_eps), 1 + hi))
                if beta:
                    d = lr[b, k, t] - lp[b, k, t]
                    term += beta * (math.exp(d) - d - 1)
                s += term
                n_t += 1
            per_resp.append(s)
            tokens.append(n_t)
        if aggregation == "seq_mean_token_mean":
            out.append(sum(s / n for s, n in zip(per_resp, tokens)) / len(idx))
        elif aggregation == "token_mean":
            out.append(sum(per_resp) / sum(tokens))
        else:
            out.append(sum(per_resp) / len(idx))
    return np.array(out)


CASES = [
    ("reinforce", {}, ref_reinforce),
    ("reinforce", {"baseline": "none"}, ref_reinforce),
    ("reinforce", {"kl_coef": 0.1}, ref_reinforce),
    ("rloo", {}, ref_rloo),
    ("rloo", {"kl_coef": 0.05}, ref_rloo),
    ("grpo", {}, ref_grpo),
    ("grpo", {"beta": 0.0}, ref_grpo),
    ("grpo", {"clip_eps": 0.02, "clip_eps_high": 0.05}, ref_grpo),
    ("grpo", {"aggregation": "token_mean"}, ref_grpo),
    ("grpo", {"aggregation": "seq_mean_token_sum", "scale_rewards": False}, ref_grpo),
    ("grpo", {"level": "sequence"}, ref_grpo),
    ("grpo", {"level": "sequence", "beta": 0.1, "clip_eps": 0.05}, ref_grpo),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("binary", [False, True])
def test_value_against_numpy(name, hp, ref, seed, binary):
    x = group_inputs(seed, binary=binary, old_noise=0.3)  # large noise: the clip is active somewhere
    got = get_loss(name, **hp)(x).loss.numpy()
    np.testing.assert_allclose(got, ref(x, **hp), rtol=1e-9, atol=1e-12)


def test_clip_is_exercised_by_the_value_cases():
    x = group_inputs(0, old_noise=0.3)
    assert get_loss("grpo")(x).metrics["clip_fraction"] > 0.1


@pytest.mark.parametrize("hp", [{}, {"level": "sequence"}])
def test_grpo_on_policy_without_old_logps(hp):
    x = group_inputs(3)
    x = x.replace(extras={})
    got = get_loss("grpo", **hp)(x).loss.numpy()
    np.testing.assert_allclose(got, ref_grpo(x, on_policy=True, **hp), rtol=1e-9, atol=1e-12)


# kl_coef > 0 is left out on purpose: the KL-shaped reward is a detached reward (as in the paper), so
# the loss's gradient is the estimator's, not the derivative of its value.
GRAD_CASES = [
    ("reinforce", {}, "list_policy_logps"),
    ("reinforce", {"baseline": "none"}, "list_policy_logps"),
    ("rloo", {}, "list_policy_logps"),
    ("grpo", {}, "list_policy_token_logps"),
    ("grpo", {"aggregation": "token_mean", "clip_eps": 0.5}, "list_policy_token_logps"),
    ("grpo", {"level": "sequence", "beta": 0.1}, "list_policy_logps"),
]


@pytest.mark.parametrize("name,hp,field", GRAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradcheck(name, hp, field):
    x = group_inputs(5, old_noise=0.05)  # ratios inside the clip range: no kink within eps
    loss = get_loss(name, **hp)
    base = getattr(x, field).clone().requires_grad_(True)

    def f(v):
        return loss(x.replace(**{field: v})).loss

    assert torch.autograd.gradcheck(f, (base,), eps=1e-6, atol=1e-6)


# ---- identities --------------------------------------------------------------------------------
def two_samples(r1, r2):
    lp = torch.tensor([[-3.0, -5.0]], dtype=torch.float64, requires_grad=True)
    return LossInputs(list_policy_logps=lp, list_scores=torch.tensor([[r1, r2]], dtype=torch.float64),
                      list_mask=torch.ones(1, 2, dtype=torch.bool)), lp


@pytest.mark.parametrize("r1,r2", [(1.0, 0.0), (0.3, 2.5), (-1.0, -1.5)])
def test_k2_advantages_are_half_the_reward_difference(r1, r2):
    x, lp = two_samples(r1, r2)
    R, mask = x.list_scores, x.list_mask
    # mean baseline: A_1 = R_1 - (R_1 + R_2)/2 = (R_1 - R_2)/2
    assert torch.allclose(reinforce_advantages(R, mask), torch.tensor([[r1 - r2, r2 - r1]], dtype=torch.float64) / 2)
    # leave-one-out: A_1 = R_1 - R_2; with the 1/K of the estimator, the gradient weight is (R_1 - R_2)/2
    assert torch.allclose(rloo_advantages(R, mask), torch.tensor([[r1 - r2, r2 - r1]], dtype=torch.float64))
    get_loss("rloo")(x).loss.sum().backward()
    assert torch.allclose(lp.grad, -torch.tensor([[r1 - r2, r2 - r1]], dtype=torch.float64) / 2)


def test_rloo_is_the_rescaled_mean_baseline():
    x = group_inputs(4)
    R, mask = x.list_scores, x.list_mask
    n = mask.sum(-1, keepdim=True).double()
    assert torch.allclose(rloo_advantages(R, mask), n / (n - 1) * reinforce_advantages(R, mask))


def test_grpo_clip_inactive_zero_kl_is_normalised_advantage_reinforce():
    x = group_inputs(6).replace(extras={})  # on-policy: rho = 1, the clip never binds
    R, mask = x.list_scores, x.list_mask
    adv = grpo_advantages(R, mask)
    # sequence level: the gradient is -A_k / N, REINFORCE's with A as the reward and no baseline
    lp = x.list_policy_logps.clone().requires_grad_(True)
    get_loss("grpo", beta=0.0, level="sequence")(x.replace(list_policy_logps=lp)).loss.sum().backward()
    lp2 = x.list_policy_logps.clone().requires_grad_(True)
    get_loss("reinforce", baseline="none")(x.replace(list_policy_logps=lp2, list_scores=adv)).loss.sum().backward()
    assert torch.allclose(lp.grad, lp2.grad, atol=1e-12)
    # token level, seq_mean_token_mean: the same weight shared by the tokens of y_k, divided by |y_k|
    tok = x.list_policy_token_logps.clone().requires_grad_(True)
    get_loss("grpo", beta=0.0)(x.replace(list_policy_token_logps=tok)).loss.sum().backward()
    lengths = x.list_token_mask.sum(-1, keepdim=True).double().clamp_min(1)
    expected = (lp2.grad.unsqueeze(-1) / lengths) * x.list_token_mask
    assert torch.allclose(tok.grad, expected, atol=1e-12)


@pytest.mark.parametrize("name,hp", [("reinforce", {}), ("rloo", {}), ("grpo", {"beta": 0.0}),
                                     ("grpo", {"beta": 0.0, "level": "sequence"})])
def test_all_equal_rewards_give_zero_advantage_and_no_gradient(name, hp):
    x = group_inputs(7)
    x = x.replace(list_scores=torch.full((B, K), 0.7, dtype=torch.float64))
    for fn in (reinforce_advantages, rloo_advantages, grpo_advantages):
        assert torch.count_nonzero(fn(x.list_scores, x.list_mask)) == 0
    field = "list_policy_token_logps" if name == "grpo" and not hp.get("level") else "list_policy_logps"
    v = getattr(x, field).clone().requires_grad_(True)
    out = get_loss(name, **hp)(x.replace(**{field: v}))
    out.loss.sum().backward()
    assert torch.count_nonzero(v.grad) == 0
    assert out.metrics["advantages/zero_groups"] == 1.0


@pytest.mark.parametrize("name,hp", [("reinforce", {}), ("rloo", {"kl_coef": 0.1}), ("grpo", {}),
                                     ("grpo", {"level": "sequence"})])
def test_padding_never_changes_the_loss(name, hp):
    x = group_inputs(8)
    pad = ~x.list_mask
    noisy = x.replace(list_policy_logps=x.list_policy_logps.masked_fill(pad, -77.0),
                      list_reference_logps=x.list_reference_logps.masked_fill(pad, 12.0),
                      list_scores=x.list_scores.masked_fill(pad, 99.0),
                      list_policy_token_logps=x.list_policy_token_logps.masked_fill(pad.unsqueeze(-1), -9.0),
                      list_token_mask=x.list_token_mask | pad.unsqueeze(-1))
    loss = get_loss(name, **hp)
    assert torch.allclose(loss(x).loss, loss(noisy).loss, atol=1e-12)


def test_k3_is_nonnegative_and_zero_at_equality():
    a = torch.randn(50, dtype=torch.float64)
    b = torch.randn(50, dtype=torch.float64)
    assert (k3_kl(a, b) >= 0).all() and torch.allclose(k3_kl(a, a), torch.zeros(50, dtype=torch.float64))


def test_dual_clip_caps_negative_advantages():
    log_ratio = torch.log(torch.tensor([5.0, 5.0, 0.5], dtype=torch.float64))
    adv = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    plain, _ = clipped_surrogate(log_ratio, adv, 0.2, 0.2)
    dual, _ = clipped_surrogate(log_ratio, adv, 0.2, 0.2, dual_clip=3.0)
    assert torch.allclose(plain, torch.tensor([5.0, -1.2, 0.8], dtype=torch.float64))
    assert torch.allclose(dual, torch.tensor([3.0, -1.2, 0.8], dtype=torch.float64))
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(log_ratio, adv, 0.2, 0.2, dual_clip=0.5)


def test_aggregations_on_a_hand_example():
    per_token = torch.tensor([[[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    assert torch.allclose(aggregate(per_token, mask, "seq_mean_token_mean"), torch.tensor([2.0], dtype=torch.float64))
    assert torch.allclose(aggregate(per_token, mask, "token_mean"), torch.tensor([2.0], dtype=torch.float64))
    assert torch.allclose(aggregate(per_token, mask, "seq_mean_token_sum"), torch.tensor([3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(per_token, mask, "sum")


def test_bad_options_are_named():
    x = group_inputs(0)
    with pytest.raises(ValueError, match="level must be one of"):
        get_loss("grpo", level="word")(x)
    with pytest.raises(ValueError, match="baseline must be one of"):
        get_loss("reinforce", baseline="median")(x)
    with pytest.raises(ValueError, match="list_policy_token_logps"):
        get_loss("grpo")(x.replace(list_policy_token_logps=None))
    with pytest.raises(ValueError, match="sampling-policy log-probs have shape"):
        get_loss("grpo")(x.replace(extras={"list_old_token_logps": torch.zeros(B, K)}))


def test_needs_follow_the_options():
    assert not get_loss("rloo").needs.reference and get_loss("rloo", kl_coef=0.1).needs.reference
    g = get_loss("grpo")
    assert g.needs.data == "lists" and g.needs.token_logps and g.needs.reference
    s = get_loss("grpo", level="sequence", beta=0.0).needs
    assert not s.token_logps and not s.reference and s.extras == ("list_old_logps",)
