"""Reference-free losses (CPO, AlphaPO, ORPO, ASFT, SimPO): values against NumPy, extremes, gradchecks."""

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss

from .conftest import np_logsig

B = 6


def inputs(seed, dtype=torch.float64, avg_lo=-3.0, avg_hi=-0.05):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(1, 30, (B,), generator=g).to(dtype)
    ll = torch.randint(1, 30, (B,), generator=g).to(dtype)
    aw = avg_lo + (avg_hi - avg_lo) * torch.rand(B, generator=g, dtype=dtype)
    al = avg_lo + (avg_hi - avg_lo) * torch.rand(B, generator=g, dtype=dtype)
    return LossInputs(policy_chosen_logps=aw * lw, policy_rejected_logps=al * ll, chosen_lengths=lw,
                      rejected_lengths=ll)


def view(x):
    f = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return f(x.policy_chosen_logps), f(x.policy_rejected_logps), f(x.chosen_lengths), f(x.rejected_lengths)


def nll(pw, lw, reduction):
    if reduction == "sum":
        return -pw
    if reduction == "example_mean":
        return -pw / lw
    # pooled over the batch's tokens: each example carries its own tokens' share, batch mean = CE
    return -pw * len(pw) / lw.sum()


def ref_cpo(x, beta=0.1, cpo_alpha=1.0, label_smoothing=0.0, nll_reduction="token_mean"):
    pw, pl, lw, ll = view(x)
    z = beta * (pw - pl)
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll(pw, lw, nll_reduction)


def ref_alphapo(x, beta=2.5, gamma=0.1, alpha=0.25, label_smoothing=0.0, cpo_alpha=0.0, nll_reduction="token_mean"):
    pw, pl, lw, ll = view(x)
    p_w, p_l = np.exp(pw / lw), np.exp(pl / ll)
    r_w = (1 - p_w ** (-alpha)) / alpha if alpha else np.log(p_w)
    r_l = (1 - p_l ** (-alpha)) / alpha if alpha else np.log(p_l)
    z = beta * (r_w - r_l) - gamma
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll(pw, lw, nll_reduction)


def _log_odds(avg):
    p = np.exp(avg)
    return np.log(p) - np.log(-np.expm1(avg))  # log(p/(1-p)), with 1-p computed accurately


def ref_orpo(x, beta=0.1, nll_reduction="token_mean"):
    pw, pl, lw, ll = view(x)
    return nll(pw, lw, nll_reduction) - beta * np_logsig(_log_odds(pw / lw) - _log_odds(pl / ll))


def ref_asft(x, lam=1.0, beta=1.0, nll_reduction="example_mean"):
    pw, pl, lw, ll = view(x)
    return nll(pw, lw, nll_reduction) - lam * (np_logsig(beta * _log_odds(pw / lw)) + np_logsig(-beta * _log_odds(pl / ll)))


def ref_simpo(x, beta=2.0, gamma=0.5, label_smoothing=0.0):
    pw, pl, lw, ll = view(x)
    z = beta * (pw / lw - pl / ll) - gamma
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z)


CASES = [
    ("cpo", {}, ref_cpo),
    ("cpo", {"cpo_alpha": 0.5, "label_smoothing": 0.1, "nll_reduction": "sum"}, ref_cpo),
    ("cpo", {"nll_reduction": "example_mean"}, ref_cpo),
    ("alphapo", {}, ref_alphapo),
    ("alphapo", {"alpha": 0.6, "cpo_alpha": 0.2}, ref_alphapo),
    ("orpo", {}, ref_orpo),
    ("orpo", {"beta": 0.5, "nll_reduction": "example_mean"}, ref_orpo),
    ("asft", {}, ref_asft),
    ("asft", {"lam": 0.2, "beta": 0.5, "nll_reduction": "token_mean"}, ref_asft),
    ("simpo", {}, ref_simpo),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    x = inputs(seed)
    np.testing.assert_allclose(get_loss(name, **hp)(x).loss.numpy(), ref(x, **hp), rtol=1e-9, atol=1e-12)


def extreme(name, hp):
    """Inputs where the preference logit is about +-50."""
    lw = torch.tensor([10.0, 10.0, 5.0, 5.0, 1.0, 1.0], dtype=torch.float64)
    ll = lw.clone()
    if name == "cpo":
        beta = hp.get("beta", 0.1)
        diff = torch.tensor([1, -1, 1, -1, 1, -1], dtype=torch.float64) * 50 / beta
        pl = torch.full((B,), -600.0, dtype=torch.float64)
        return LossInputs(policy_chosen_logps=pl + diff, policy_rejected_logps=pl, chosen_lengths=lw, rejected_lengths=ll)
    # near-certain vs near-impossible responses: average log-probs -1e-5 and -45
    good, bad = torch.full((B,), -1e-5, dtype=torch.float64), torch.full((B,), -45.0, dtype=torch.float64)
    flip = torch.tensor([True, False, True, False, True, False])
    aw, al = torch.where(flip, good, bad), torch.where(flip, bad, good)
    return LossInputs(policy_chosen_logps=aw * lw, policy_rejected_logps=al * ll, chosen_lengths=lw, rejected_lengths=ll)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
def test_value_extreme(name, hp, ref):
    x = extreme(name, hp)
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), ref(x, **hp), rtol=1e-7, atol=1e-9)
    got32 = get_loss(name, **hp)(x.replace(**{k: getattr(x, k).float() for k in (
        "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths")})).loss
    assert torch.isfinite(got32).all()


def test_identities():
    x = inputs(5)
    close = torch.testing.assert_close
    # AlphaPO with alpha = 0 is SimPO
    close(get_loss("alphapo", alpha=0.0, beta=2.0, gamma=0.5)(x).loss, get_loss("simpo", beta=2.0, gamma=0.5)(x).loss)
    # CPO without its NLL term is DPO with a uniform reference
    zero = torch.zeros(B, dtype=torch.float64)
    close(get_loss("cpo", cpo_alpha=0.0)(x).loss,
          get_loss("dpo")(x.replace(reference_chosen_logps=zero, reference_rejected_logps=zero)).loss)
    # ASFT (beta=1, per-example NLL) = -(1+lam) avg_w - lam log(1 - exp(avg_l))
    pw, pl, lw, ll = view(x)
    lam = 0.7
    np.testing.assert_allclose(get_loss("asft", lam=lam)(x).loss.numpy(),
                               -(1 + lam) * pw / lw - lam * np.log(-np.expm1(pl / ll)), rtol=1e-9)
    # the pooled NLL's batch mean is the token-mean cross-entropy of the batch
    out = get_loss("orpo", beta=0.0)(x).loss
    np.testing.assert_allclose(out.mean().item(), -pw.sum() / lw.sum(), rtol=1e-12)


@pytest.mark.parametrize("name,hp", [("cpo", {}), ("alphapo", {"cpo_alpha": 0.3}), ("orpo", {"beta": 0.5}),
                                     ("asft", {"beta": 0.7}), ("cpo", {"nll_reduction": "example_mean"})])
def test_gradcheck(name, hp):
    x = inputs(9)
    pw = x.policy_chosen_logps.clone().requires_grad_()
    pl = x.policy_rejected_logps.clone().requires_grad_()
    loss = get_loss(name, **hp)
    assert torch.autograd.gradcheck(
        lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss, (pw, pl))
