"""COPO: value against a loop-based NumPy reference, gradcheck, the released defaults, the identities of
its consistency terms, and the share of groups that still give a gradient when all answers agree."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss, get_spec
from dpokit.losses.policy_gradient import (answer_entropy, answer_ids_from_strings, copo_advantages,
                                           vanishing_advantage_fraction)

from .test_policy_gradient import B, K, group_inputs, npv


def with_answers(seed, old_noise=0.3):
    x = group_inputs(seed, binary=True, old_noise=old_noise)
    g = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(0, 2, (B, K), generator=g).double()
    ids[2] = 0.0  # one consistent group
    x.list_scores[2] = 1.0
    x.extras["answer_ids"] = ids
    return x


def ref_copo(x, k=5.0, b=1.0, mode="soft_with_zero", consistency_coef=False, clip_eps=0.2, dual_clip=3.0, eps=1e-6):
    R, m, ids = npv(x.list_scores), npv(x.list_mask), npv(x.extras["answer_ids"])
    lp, old, tm = npv(x.list_policy_token_logps), npv(x.extras["list_old_token_logps"]), npv(x.list_token_mask)
    groups = []
    for g in range(R.shape[0]):
        idx = [i for i in range(R.shape[1]) if m[g, i]]
        r = np.array([R[g, i] for i in idx])
        n = len(idx)
        sd = math.sqrt(((r - r.mean()) ** 2).sum() / (n - 1)) if n > 1 else 0.0
        local = np.zeros(n) if np.all(r == r[0]) else (r - r.mean()) / (sd + eps)
        counts = {}
        for i in idx:
            counts[ids[g, i]] = counts.get(ids[g, i], 0) + 1
        H = -sum(c / n * math.log2(c / n) for c in counts.values())
        coef = 1 - (1 - 1 / n) / math.log2(n) * H if consistency_coef else 1.0
        groups.append(dict(idx=idx, r=r, local=local, H=H, R=r.mean() * coef))
    Rg = np.array([gr["R"] for gr in groups])
    glob = (Rg - Rg.mean()) / (Rg.std(ddof=1) + eps)

    def surrogate(a, rho):
        loss = max(-a * rho, -a * min(max(rho, 1 - clip_eps), 1 + clip_eps))
        return min(loss, -a * dual_clip) if a < 0 else loss

    out = []
    for g, gr in enumerate(groups):
        w0 = 1 / (1 + math.exp(-k * (gr["H"] - b)))
        total = 0.0
        for j, i in enumerate(gr["idx"]):
            w = {"soft_with_zero": w0 * (gr["r"][j] != 0), "soft_with_forced": w0 * (gr["local"][j] != 0),
                 "only_soft": w0, "only_global": 0.0, "no_global": 1.0}[mode]
            s, n_t = 0.0, 0
            for t in range(lp.shape[2]):
                if tm[g, i, t]:
                    rho = math.exp(lp[g, i, t] - old[g, i, t])
                    s += (1 - w) * surrogate(glob[g], rho) + w * surrogate(gr["local"][j], rho)
                    n_t += 1
            total += s / n_t
        out.append(total / len(gr["idx"]))
    return np.array(out)


CASES = [{}, {"mode": "soft_with_forced"}, {"mode": "only_soft", "k": 1.0, "b": 0.5},
         {"mode": "only_global"}, {"mode": "no_global"}, {"consistency_coef": True}]


@pytest.mark.parametrize("hp", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_against_numpy(hp, seed):
    x = with_answers(seed)
    got = get_loss("copo", **hp)(x).loss.numpy()
    np.testing.assert_allclose(got, ref_copo(x, **hp), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("hp", [{}, {"mode": "only_soft"}, {"level": "sequence"}])
def test_gradcheck(hp):
    x = with_answers(4, old_noise=0.05)
    field = "list_policy_logps" if hp.get("level") == "sequence" else "list_policy_token_logps"
    loss = get_loss("copo", **hp)

    def f(v):
        return loss(x.replace(**{field: v})).loss

    assert torch.autograd.gradcheck(f, (getattr(x, field).clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_released_defaults():
    d = get_spec("copo").defaults
    assert (d["mode"], d["k"], d["b"], d["consistency_coef"]) == ("soft_with_zero", 5.0, 1.0, False)
    assert (d["clip_eps"], d["dual_clip"], d["beta"], d["aggregation"]) == (0.2, 3.0, 0.0, "seq_mean_token_mean")
    assert get_loss("copo").needs.batch_coupled


def test_answer_entropy_and_ids():
    ids, mask = answer_ids_from_strings([["4", "4", "5", "5"], ["7", "7", "7", "7"], ["1", "2", "3", "4"], ["x", "y"]])
    h = answer_entropy(ids, mask)
    assert torch.allclose(h, torch.tensor([1.0, 0.0, 2.0, 1.0]), atol=1e-6)
    assert mask[3].tolist() == [True, True, False, False]


@pytest.mark.parametrize("G", [2, 3, 6, 8])
def test_consistency_coefficient_lies_in_one_over_g_to_one(G):
    # all-distinct answers give the largest entropy log2 G: c = 1 - (1 - 1/G) = 1/G; all equal give 1
    rewards = torch.ones(2, G, dtype=torch.float64)
    mask = torch.ones(2, G, dtype=torch.bool)
    ids = torch.stack([torch.arange(G).double(), torch.zeros(G, dtype=torch.float64)])
    _, _, _, h = copo_advantages(rewards, ids, mask, consistency_coef=True)
    lam = (1 - 1 / G) / math.log2(G)
    c = 1 - lam * h
    assert torch.allclose(c, torch.tensor([1 / G, 1.0], dtype=torch.float64))


def test_local_weight_vanishes_when_all_answers_agree():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    ids = torch.zeros(1, 4, dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    weights = [float(copo_advantages(rewards, ids, mask, k=k, b=1.0, mode="only_soft")[2][0, 0]) for k in (1, 5, 20)]
    assert weights[0] > weights[1] > weights[2] and weights[2] < 1e-8
    assert math.isclose(weights[1], 1 / (1 + math.exp(5.0)))


def test_no_global_on_policy_equals_grpo_without_kl():
    x = with_answers(5).replace(extras={"answer_ids": with_answers(5).extras["answer_ids"]})
    a = get_loss("copo", mode="no_global")(x).loss
    bb = get_loss("grpo", beta=0.0)(x).loss
    assert torch.allclose(a, bb, atol=1e-12)


def consistent_groups(correct, wrong, diverse=0, G=6):
    """Groups whose G answers all agree (all right or all wrong), plus ``diverse`` half-right groups."""
    rows, ids = [], []
    for _ in range(correct):
        rows.append([1.0] * G)
        ids.append([0.0] * G)
    for _ in range(wrong):
        rows.append([0.0] * G)
        ids.append([1.0] * G)
    for _ in range(diverse):
        rows.append([1.0] * (G // 2) + [0.0] * (G - G // 2))
        ids.append([0.0] * (G // 2) + [float(i + 1) for i in range(G - G // 2)])
    r = torch.tensor(rows, dtype=torch.float64)
    return r, torch.tensor(ids, dtype=torch.float64), torch.ones_like(r, dtype=torch.bool)


# (correct groups, wrong groups, diverse groups) -> (GRPO fraction, COPO fraction); docs/losses/policy_gradient.md
VANISHING = [((4, 4, 0), (1.0, 0.0)), ((7, 1, 0), (1.0, 0.0)), ((0, 8, 0), (1.0, 1.0)), ((8, 0, 0), (1.0, 1.0)),
             ((6, 6, 4), (0.75, 0.0))]


@pytest.mark.parametrize("groups,expected", VANISHING, ids=[str(g) for g, _ in VANISHING])
def test_vanishing_advantage_fraction(groups, expected):
    r, ids, mask = consistent_groups(*groups)
    assert vanishing_advantage_fraction(r, mask, ids, method="grpo") == expected[0]
    assert vanishing_advantage_fraction(r, mask, ids, method="copo") == expected[1]


def test_consistent_groups_get_a_gradient_under_copo_only():
    r, ids, mask = consistent_groups(4, 4)
    x = group_inputs(0).replace(list_mask=mask, list_scores=r)
    T = x.list_token_mask.shape[-1]
    x = x.replace(list_token_mask=torch.ones(r.shape[0], r.shape[1], T, dtype=torch.bool),
                  list_policy_token_logps=-torch.ones(r.shape[0], r.shape[1], T, dtype=torch.float64),
                  extras={"answer_ids": ids})
    grads = {}
    for name in ("grpo", "copo"):
        v = x.list_policy_token_logps.clone().requires_grad_(True)
        get_loss(name, beta=0.0)(x.replace(list_policy_token_logps=v)).loss.sum().backward()
        grads[name] = v.grad
    assert torch.count_nonzero(grads["grpo"]) == 0
    assert (grads["copo"][:4] < 0).all() and (grads["copo"][4:] > 0).all()  # push right up, wrong down


def test_bad_mode_and_missing_answers_are_named():
    x = with_answers(0)
    with pytest.raises(ValueError, match="copo mode must be one of"):
        get_loss("copo", mode="soft")(x)
    with pytest.raises(ValueError, match="answer_ids"):
        get_loss("copo")(x.replace(extras={}))
