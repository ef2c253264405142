"""Token-level losses (TDPO, token-weighted DPO, TAB-PO): NumPy references written with explicit
loops over tokens, identities with sequence-level losses, gradchecks."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import diff_token_weights, get_loss

from .conftest import make_full_inputs, np_logsig


def tok(x):
    f = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return dict(
        pw=f(x.policy_chosen_token_logps), pl=f(x.policy_rejected_token_logps),
        rw=f(x.reference_chosen_token_logps), rl=f(x.reference_rejected_token_logps),
        mw=x.chosen_token_mask.numpy(), ml=x.rejected_token_mask.numpy(),
        klw=f(x.token_stats["chosen/ref_kl"]), kll=f(x.token_stats["rejected/ref_kl"]),
        ww=f(x.extras["chosen_token_weights"]), wl=f(x.extras["rejected_token_weights"]),
    )


def ref_tdpo(x, beta=0.1, alpha=0.5, tdpo2=False):
    d = tok(x)
    out = []
    for i in range(d["pw"].shape[0]):
        u = kw = kl = 0.0
        for t in range(d["pw"].shape[1]):
            if d["mw"][i, t]:
                u += d["pw"][i, t] - d["rw"][i, t]
                kw += d["klw"][i, t]
            if d["ml"][i, t]:
                u -= d["pl"][i, t] - d["rl"][i, t]
                kl += d["kll"][i, t]
        logit = u - (alpha if tdpo2 else 1.0) * (kl - kw)
        out.append(-np_logsig(beta * logit))
    return np.array(out)


def ref_token_dpo(x, beta=0.1):
    d = tok(x)
    h = (d["ww"] * (d["pw"] - d["rw"]) * d["mw"]).sum(1) - (d["wl"] * (d["pl"] - d["rl"]) * d["ml"]).sum(1)
    return -np_logsig(beta * h)


def ref_tab_po(x, beta=0.5, tau=0.66, lam=0.5, aggregation="weighted_mean", normalize_weights=True):
    d = tok(x)
    out = []
    for i in range(d["pw"].shape[0]):
        idx_w = [t for t in range(d["pw"].shape[1]) if d["mw"][i, t]]
        idx_l = [t for t in range(d["pl"].shape[1]) if d["ml"][i, t]]
        if aggregation == "weighted_mean":
            ww = np.array([d["ww"][i, t] for t in idx_w])
            wl = np.array([d["wl"][i, t] for t in idx_l])
            if normalize_weights:
                ww = ww * len(idx_w) / ww.sum()
                wl = wl * len(idx_l) / wl.sum()
            s_w = sum(w * d["pw"][i, t] for w, t in zip(ww, idx_w)) / len(idx_w)
            s_l = sum(w * d["pl"][i, t] for w, t in zip(wl, idx_l)) / len(idx_l)
            sr_w = sum(w * d["rw"][i, t] for w, t in zip(ww, idx_w)) / len(idx_w)
            sr_l = sum(w * d["rl"][i, t] for w, t in zip(wl, idx_l)) / len(idx_l)
        else:
            ww = np.ones(len(idx_w))
            s_w, s_l = sum(d["pw"][i, t] for t in idx_w), sum(d["pl"][i, t] for t in idx_l)
            sr_w, sr_l = sum(d["rw"][i, t] for t in idx_w), sum(d["rl"][i, t] for t in idx_l)
        pref = -np_logsig(beta * ((s_w - s_l) - (sr_w - sr_l)))
        num = den = 0.0
        for w, t in zip(ww, idx_w):
            if math.exp(d["pw"][i, t]) < tau:  # under-confident chosen token
                num += w * -d["pw"][i, t]
                den += w
        out.append(pref + lam * num / max(1.0, den))
    return np.array(out)


CASES = [
    ("tdpo", {}, ref_tdpo),
    ("tdpo", {"tdpo2": True, "alpha": 0.3, "beta": 0.5}, ref_tdpo),
    ("token_dpo", {}, ref_token_dpo),
    ("token_dpo", {"beta": 1.0}, ref_token_dpo),
    ("tab_po", {}, ref_tab_po),
    ("tab_po", {"normalize_weights": False, "tau": 0.3}, ref_tab_po),
    ("tab_po", {"aggregation": "sum", "lam": 1.0}, ref_tab_po),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    x = make_full_inputs(batch=5, T=7, seed=seed)
    np.testing.assert_allclose(get_loss(name, **hp)(x).loss.numpy(), ref(x, **hp), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
def test_value_extreme(name, hp, ref):
    x = make_full_inputs(batch=4, T=5, seed=3)
    beta = hp.get("beta", {"tab_po": 0.5}.get(name, 0.1))
    # shift every chosen token so the preference logit is about +-50
    s = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).unsqueeze(1)
    if name == "tab_po" and hp.get("aggregation", "weighted_mean") == "weighted_mean":
        shift = s * 50.0 / beta  # mean log-probs move by the shift
    else:
        shift = s * 50.0 / beta / x.chosen_token_mask.sum(1, keepdim=True).double()
    x.reference_chosen_token_logps = (x.reference_chosen_token_logps - shift) * x.chosen_token_mask
    x = _dpo_view(x)  # keep the sequence sums consistent with the tokens
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), ref(x, **hp), rtol=1e-9, atol=1e-12)


def _dpo_view(x):
    return x.replace(policy_chosen_logps=(x.policy_chosen_token_logps * x.chosen_token_mask).sum(1),
                     policy_rejected_logps=(x.policy_rejected_token_logps * x.rejected_token_mask).sum(1),
                     reference_chosen_logps=(x.reference_chosen_token_logps * x.chosen_token_mask).sum(1),
                     reference_rejected_logps=(x.reference_rejected_token_logps * x.rejected_token_mask).sum(1))


def test_tdpo_reduces_to_dpo():
    x = make_full_inputs(seed=4)
    dpo = get_loss("dpo")(x).loss
    zero_kl = {k: torch.zeros_like(v) for k, v in x.token_stats.items()}
    for hp in ({}, {"tdpo2": True}):
        torch.testing.assert_close(get_loss("tdpo", **hp)(x.replace(token_stats=zero_kl)).loss, dpo)
    # identical policy and reference: the KL terms vanish and the loss is DPO's log 2
    same = x.replace(reference_chosen_logps=x.policy_chosen_logps, reference_rejected_logps=x.policy_rejected_logps,
                     token_stats=zero_kl)
    torch.testing.assert_close(get_loss("tdpo")(same).loss, torch.full((4,), math.log(2), dtype=torch.float64))


def test_tdpo2_stops_gradient_of_chosen_kl():
    x = make_full_inputs(seed=5)
    for tdpo2, expect_grad in ((False, True), (True, False)):
        klw = x.token_stats["chosen/ref_kl"].clone().requires_grad_()
        stats = dict(x.token_stats, **{"chosen/ref_kl": klw})
        pw = x.policy_chosen_logps.clone().requires_grad_()
        get_loss("tdpo", tdpo2=tdpo2)(x.replace(token_stats=stats, policy_chosen_logps=pw)).loss.sum().backward()
        assert pw.grad is not None
        has = klw.grad is not None and bool((klw.grad != 0).any())
        assert has == expect_grad


def test_token_weighted_identities():
    x = _dpo_view(make_full_inputs(seed=6))
    ones = {"chosen_token_weights": torch.ones_like(x.policy_chosen_token_logps),
            "rejected_token_weights": torch.ones_like(x.policy_rejected_token_logps)}
    torch.testing.assert_close(get_loss("token_dpo")(x.replace(extras=ones)).loss, get_loss("dpo")(x).loss)
    # TAB-PO without the barrier and with unit weights is length-normalised DPO
    torch.testing.assert_close(get_loss("tab_po", lam=0.0, beta=0.5)(x.replace(extras={})).loss,
                               get_loss("sigmoid_norm", beta=0.5)(x).loss)
    torch.testing.assert_close(get_loss("tab_po", lam=0.0, beta=0.5, aggregation="sum")(x).loss,
                               get_loss("dpo", beta=0.5)(x).loss)
    with pytest.raises(ValueError):
        get_loss("token_dpo")(x.replace(extras={}))


def test_tab_po_barrier_gradient_only_on_gated_chosen_tokens():
    x = make_full_inputs(seed=7)
    lp = x.policy_chosen_token_logps.clone().requires_grad_()
    out = get_loss("tab_po", beta=0.5, lam=1.0)
    beta_only = get_loss("tab_po", beta=0.5, lam=0.0)
    g_full = torch.autograd.grad(out(x.replace(policy_chosen_token_logps=lp)).loss.sum(), lp)[0]
    g_pref = torch.autograd.grad(beta_only(x.replace(policy_chosen_token_logps=lp)).loss.sum(), lp)[0]
    diff = (g_full - g_pref).abs() > 1e-12
    gated = (x.policy_chosen_token_logps < math.log(0.66)) & x.chosen_token_mask
    assert torch.equal(diff, gated)


def test_diff_token_weights():
    chosen = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    rejected = torch.tensor([[5, 9, 7], [1, 3, 4]])
    mc = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    mr = torch.tensor([[1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    w_c, w_r = diff_token_weights(chosen, rejected, mc, mr, multiplier=1.2)
    torch.testing.assert_close(w_c, torch.tensor([[1, 1.2, 1, 1], [1, 1.2, 0, 0]]))
    torch.testing.assert_close(w_r, torch.tensor([[1, 1.2, 1], [1, 1.2, 1]]))


@pytest.mark.parametrize("name,hp", [("tdpo", {"beta": 0.5}), ("tdpo", {"tdpo2": True, "beta": 0.5}),
                                     ("token_dpo", {"beta": 0.3}), ("tab_po", {}),
                                     ("tab_po", {"aggregation": "sum", "beta": 0.1})])
def test_gradcheck(name, hp):
    x = make_full_inputs(batch=3, T=5, seed=8)
    # keep chosen tokens away from the barrier's gate threshold log(0.66) (a kink)
    away = torch.where((x.policy_chosen_token_logps - math.log(0.66)).abs() < 0.05,
                       x.policy_chosen_token_logps - 0.1, x.policy_chosen_token_logps) * x.chosen_token_mask
    a = away.clone().requires_grad_()
    b = x.policy_rejected_token_logps.clone().requires_grad_()
    klw = x.token_stats["chosen/ref_kl"].clone().requires_grad_()
    loss = get_loss(name, **hp)

    def f(ta, tb, k):
        y = x.replace(policy_chosen_token_logps=ta * x.chosen_token_mask,
                      policy_rejected_token_logps=tb * x.rejected_token_mask,
                      policy_chosen_logps=(ta * x.chosen_token_mask).sum(1),
                      policy_rejected_logps=(tb * x.rejected_token_mask).sum(1),
                      token_stats=dict(x.token_stats, **{"chosen/ref_kl": k}))
        return loss(y).loss

    if hp.get("tdpo2"):  # TDPO2 stops the gradient of the chosen KL on purpose
        assert torch.autograd.gradcheck(lambda ta, tb: f(ta, tb, klw.detach()), (a, b))
    else:
        assert torch.autograd.gradcheck(f, (a, b, klw))
