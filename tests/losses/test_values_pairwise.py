"""Pairwise losses with a reference: values against independent NumPy implementations, at random
inputs and at extreme margins (|beta*h| = 50), plus float64 gradchecks."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss

from .conftest import np_logsig, np_sig

B = 6


def seq_inputs(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pw = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    pl = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    rw = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    rl = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    lw = torch.randint(1, 40, (B,), generator=g).to(dtype)
    ll = torch.randint(1, 40, (B,), generator=g).to(dtype)
    return LossInputs(policy_chosen_logps=pw, policy_rejected_logps=pl, reference_chosen_logps=rw,
                      reference_rejected_logps=rl, chosen_lengths=lw, rejected_lengths=ll)


def extreme_inputs(beta, target=50.0, seed=0, dtype=torch.float64):
    """Pairs with beta*h = +-target (alternating signs)."""
    base = seq_inputs(seed, dtype)
    s = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(B)], dtype=dtype)
    half = s * target / (2.0 * beta)
    return base.replace(policy_chosen_logps=base.reference_chosen_logps + half,
                        policy_rejected_logps=base.reference_rejected_logps - half)


def np_view(x: LossInputs):
    f = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return dict(pw=f(x.policy_chosen_logps), pl=f(x.policy_rejected_logps), rw=f(x.reference_chosen_logps),
                rl=f(x.reference_rejected_logps), lw=f(x.chosen_lengths), ll=f(x.rejected_lengths))


def _r(d):
    return d["pw"] - d["rw"], d["pl"] - d["rl"]


# ---- independent references ------------------------------------------------------------------
def ref_dpo(d, beta=0.1):
    rw, rl = _r(d)
    return -np_logsig(beta * (rw - rl))


def ref_ipo(d, beta=0.1, length_normalize=True):
    rw, rl = _r(d)
    if length_normalize:
        rw, rl = rw / d["lw"], rl / d["ll"]
    return (rw - rl - 1 / (2 * beta)) ** 2


def ref_cdpo(d, beta=0.1, eps=0.2):
    rw, rl = _r(d)
    z = beta * (rw - rl)
    return -(1 - eps) * np_logsig(z) - eps * np_logsig(-z)


def ref_rdpo(d, beta=0.1, eps=0.1):
    rw, rl = _r(d)
    z = beta * (rw - rl)
    return ((1 - eps) * -np_logsig(z) - eps * -np_logsig(-z)) / (1 - 2 * eps)


def ref_hinge(d, beta=0.1):
    rw, rl = _r(d)
    return np.maximum(0.0, 1 - beta * (rw - rl))


def ref_fdpo(d, beta=0.1, f_divergence_type="reverse_kl", alpha=0.5):
    rw, rl = _r(d)
    # f'(u) with u = pi/pi_ref, written with u itself (not via log-space helpers)
    if f_divergence_type == "reverse_kl":
        fp = np.log
    elif f_divergence_type == "forward_kl":
        fp = lambda u: 1 - 1 / u  # noqa: E731
    elif f_divergence_type == "js_divergence":
        fp = lambda u: np.log(2 * u / (1 + u))  # noqa: E731
    else:
        fp = lambda u: (1 - u ** (-alpha)) / alpha  # noqa: E731
    with np.errstate(over="ignore"):
        return -np_logsig(beta * (fp(np.exp(rw)) - fp(np.exp(rl))))


def ref_exo(d, beta=0.1, eps=1e-3):
    rw, rl = _r(d)
    z = beta * (rw - rl)
    qw, ql = np_sig(z), np_sig(-z)
    # KL(q || p) over the two outcomes, p = [1-eps, eps]
    return qw * (np_logsig(z) - math.log(1 - eps)) + ql * (np_logsig(-z) - math.log(eps))


def ref_nca(d, beta=0.01):
    rw, rl = _r(d)
    return -np_logsig(beta * rw) - 0.5 * np_logsig(-beta * rw) - 0.5 * np_logsig(-beta * rl)


def ref_sppo_hard(d, beta=1e-3):
    rw, rl = _r(d)
    return (rw - 0.5 / beta) ** 2 + (rl + 0.5 / beta) ** 2


def ref_apo_zero(d, beta=0.1):
    rw, rl = _r(d)
    return (1 - np_sig(beta * rw)) + np_sig(beta * rl)


def ref_apo_down(d, beta=0.1):
    rw, rl = _r(d)
    return np_sig(beta * rw) + (1 - np_sig(beta * (rw - rl)))


def ref_discopop(d, beta=0.05, tau=0.05):
    rw, rl = _r(d)
    z = beta * (rw - rl)
    m = np_sig(z / tau)
    return (1 - m) * -np_logsig(z) + m * np.exp(-z)


def ref_cal_dpo(d, beta=1e-3, calibration_weight=0.5, length_normalize=False):
    rw, rl = _r(d)
    if length_normalize:
        rw, rl = rw / d["lw"], rl / d["ll"]
    t = 1 / (2 * beta)
    return -np_logsig(rw - rl) + calibration_weight * ((rw - t) ** 2 + (rl + t) ** 2)


def ref_sigmoid_norm(d, beta=0.1):
    rw, rl = _r(d)
    return -np_logsig(beta * (rw / d["lw"] - rl / d["ll"]))


def ref_aot(d, beta=0.01, label_smoothing=0.0):
    delta = np.sort(d["pw"] - d["pl"]) - np.sort(d["rw"] - d["rl"])
    z = beta * delta
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z)


def ref_aot_unpaired(d, beta=0.01, label_smoothing=0.0):
    rw, rl = _r(d)
    z = beta * (np.sort(rw) - np.sort(rl))
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z)


def ref_rpo(d, beta=0.01, eta=0.005, variant="sum"):
    base = ref_dpo(d, beta)
    if variant == "sum":
        return base - eta * beta * d["pw"]
    return base + eta * (-d["pw"] / d["lw"])


def ref_flex(d, beta_w=0.1, beta_l=0.08):
    rw, rl = _r(d)
    return -np_logsig(beta_w * rw - beta_l * rl)


def ref_sft_dpo(d, beta=0.1, gamma=0.01):
    return ref_dpo(d, beta) - gamma * d["pw"]


def ref_phi(d, beta=0.1, gamma=2.0, sft_weight=0.0):
    rw, rl = _r(d)
    z = beta * (rw - rl)
    return -(np_sig(-z) ** gamma) * np_logsig(z) + sft_weight * (-d["pw"] / d["lw"])


CASES = [
    ("dpo", {}, ref_dpo),
    ("dpo", {"beta": 0.5}, ref_dpo),
    ("ipo", {}, ref_ipo),
    ("ipo", {"length_normalize": False, "beta": 0.3}, ref_ipo),
    ("cdpo", {}, ref_cdpo),
    ("rdpo", {"eps": 0.25}, ref_rdpo),
    ("hinge", {}, ref_hinge),
    ("fdpo", {}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "forward_kl"}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "js_divergence"}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.5}, ref_fdpo),
    ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.3}, ref_fdpo),
    ("exo", {}, ref_exo),
    ("exo", {"eps": 0.1, "beta": 0.5}, ref_exo),
    ("nca", {}, ref_nca),
    ("sppo_hard", {}, ref_sppo_hard),
    ("apo_zero", {}, ref_apo_zero),
    ("apo_down", {}, ref_apo_down),
    ("discopop", {}, ref_discopop),
    ("discopop", {"tau": 0.5, "beta": 0.1}, ref_discopop),
    ("cal_dpo", {}, ref_cal_dpo),
    ("cal_dpo", {"calibration_weight": 1.0, "length_normalize": True, "beta": 0.1}, ref_cal_dpo),
    ("sigmoid_norm", {}, ref_sigmoid_norm),
    ("aot", {}, ref_aot),
    ("aot", {"label_smoothing": 0.1, "beta": 0.1}, ref_aot),
    ("aot_unpaired", {}, ref_aot_unpaired),
    ("rpo", {}, ref_rpo),
    ("rpo", {"variant": "mean", "eta": 0.2, "beta": 0.5}, ref_rpo),
    ("flex_dpo", {}, ref_flex),
    ("sft_dpo", {"gamma": 0.3}, ref_sft_dpo),
    ("phi_dpo", {}, ref_phi),
    ("phi_dpo", {"gamma": 0.5, "sft_weight": 1.0}, ref_phi),
]


def _beta_for(name, hp):
    from dpokit.losses import get_spec
    spec = get_spec(name)
    return hp.get("beta", hp.get("beta_w", spec.defaults.get("beta", spec.defaults.get("beta_w"))))


@pytest.mark.parametrize("name,hp,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    x = seq_inputs(seed)
    got = get_loss(name, **hp)(x).loss.numpy()
    np.testing.assert_allclose(got, ref(np_view(x), **hp), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_extreme_margin(name, hp, ref, dtype):
    beta = _beta_for(name, hp)
    x = extreme_inputs(beta, 50.0, dtype=dtype)
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all(), got
    if dtype == torch.float64:
        np.testing.assert_allclose(got.numpy(), ref(np_view(x), **hp), rtol=1e-9, atol=1e-9)


def test_extreme_margin_limits():
    """At beta*h = +50 the logistic-type losses vanish; at -50 they grow linearly (about 50)."""
    x = extreme_inputs(0.1, 50.0)
    for loss in (get_loss("dpo"), get_loss("fdpo"), get_loss("phi_dpo", gamma=0.0), get_loss("phi_dpo")):
        out = loss(x).loss
        assert out[0] < 1e-20
        assert abs(out[1].item() - 50.0) < 1e-9


def test_fdpo_float32_huge_ratios_are_finite():
    # exponents far beyond fp32's range are clamped (TRL clamps at 80 for fp32)
    x = extreme_inputs(0.1, 5000.0, dtype=torch.float32)
    for kind in ("forward_kl", "alpha_divergence", "js_divergence"):
        out = get_loss("fdpo", f_divergence_type=kind)(x).loss
        assert torch.isfinite(out).all(), kind


def test_discopop_no_nan_where_naive_form_fails():
    x = extreme_inputs(0.05, 2000.0)  # z = -2000: sig(z/tau) = 0 and exp(-z) = inf in a naive form
    out = get_loss("discopop")(x).loss
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out[1].item(), 2000.0, rtol=1e-12)


# ---- stateful BCO pair -----------------------------------------------------------------------
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


# ---- SPPO with win probabilities, MODPO --------------------------------------------------------
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


# ---- identities ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 7])
def test_identities(seed):
    x = seq_inputs(seed)
    dpo = get_loss("dpo", beta=0.1)(x).loss
    close = torch.testing.assert_close
    close(get_loss("rdpo", eps=0.0)(x).loss, dpo)
    close(get_loss("cdpo", eps=0.0)(x).loss, dpo)
    close(get_loss("fdpo", f_divergence_type="reverse_kl")(x).loss, dpo)
    close(get_loss("fdpo", f_divergence_type="alpha_divergence", alpha=0.0)(x).loss, dpo)
    close(get_loss("fdpo", f_divergence_type="alpha_divergence", alpha=1.0)(x).loss,
          get_loss("fdpo", f_divergence_type="forward_kl")(x).loss)
    close(get_loss("phi_dpo", gamma=0.0)(x).loss, dpo)
    close(get_loss("flex_dpo", beta_w=0.1, beta_l=0.1)(x).loss, dpo)
    close(get_loss("rpo", eta=0.0, beta=0.1)(x).loss, dpo)
    close(get_loss("sft_dpo", gamma=0.0)(x).loss, dpo)
    close(get_loss("hinge", beta=0.1)(x).loss, torch.relu(1 - 0.1 * x.margin()))
    # aot with batch size 1 has nothing to sort: it is DPO on the policy/reference log-ratio margins
    one = x.replace(**{k: getattr(x, k)[:1] for k in ("policy_chosen_logps", "policy_rejected_logps",
                                                       "reference_chosen_logps", "reference_rejected_logps")})
    close(get_loss("aot", beta=0.1)(one).loss, get_loss("dpo", beta=0.1)(one).loss)


def test_simpo_gamma0_equals_sigmoid_norm_without_reference():
    x = seq_inputs(2)
    zero = x.replace(reference_chosen_logps=torch.zeros(B, dtype=torch.float64),
                     reference_rejected_logps=torch.zeros(B, dtype=torch.float64))
    torch.testing.assert_close(get_loss("sigmoid_norm", beta=2.0)(zero).loss,
                               get_loss("simpo", beta=2.0, gamma=0.0)(x.replace(reference_chosen_logps=None,
                                                                               reference_rejected_logps=None)).loss)


def test_exo_is_a_kl_and_zero_at_target():
    eps = 0.05
    # q = [1-eps, eps] exactly when beta*h = log((1-eps)/eps)
    h = math.log((1 - eps) / eps) / 0.1
    x = seq_inputs(0)
    x = x.replace(policy_chosen_logps=x.reference_chosen_logps + h, policy_rejected_logps=x.reference_rejected_logps)
    out = get_loss("exo", eps=eps)(x).loss
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-12)
    assert (get_loss("exo", eps=eps)(seq_inputs(1)).loss >= -1e-12).all()


def test_discopop_blend_limits():
    x = seq_inputs(0)
    # tau -> large: m -> 1/2, an even blend of logistic and exponential at small z
    small = x.replace(policy_chosen_logps=x.reference_chosen_logps + 1e-3, policy_rejected_logps=x.reference_rejected_logps)
    out = get_loss("discopop", beta=1.0, tau=1e9)(small).loss
    z = 1e-3
    np.testing.assert_allclose(out.numpy(), 0.5 * -np_logsig(z) + 0.5 * math.exp(-z), rtol=1e-9)


# ---- gradchecks ------------------------------------------------------------------------------
GRAD_CASES = [
    ("dpo", {}), ("fdpo", {"f_divergence_type": "forward_kl", "beta": 0.5}),
    ("fdpo", {"f_divergence_type": "js_divergence", "beta": 0.5}),
    ("fdpo", {"f_divergence_type": "alpha_divergence", "alpha": 0.3, "beta": 0.5}),
    ("exo", {"beta": 0.5}), ("nca", {"beta": 0.3}), ("sppo_hard", {"beta": 0.2}), ("apo_zero", {"beta": 0.5}),
    ("apo_down", {"beta": 0.5}), ("discopop", {"beta": 0.2, "tau": 0.3}), ("cal_dpo", {"beta": 0.2}),
    ("sigmoid_norm", {"beta": 2.0}), ("aot", {"beta": 0.5, "label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.5}), ("rpo", {"beta": 0.3}), ("rpo", {"variant": "mean"}),
    ("flex_dpo", {}), ("sft_dpo", {}), ("phi_dpo", {"beta": 0.5}), ("phi_dpo", {"gamma": 0.7, "sft_weight": 1.0}),
    ("ipo", {}), ("hinge", {"beta": 0.01}),
]


@pytest.mark.parametrize("name,hp", GRAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradcheck(name, hp):
    x = seq_inputs(11)
    scale = 0.2  # keep margins moderate so finite differences are accurate
    pw = (x.reference_chosen_logps + scale * torch.randn(B, dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(1))).requires_grad_()
    pl = (x.reference_rejected_logps + scale * torch.randn(B, dtype=torch.float64,
                                                            generator=torch.Generator().manual_seed(2))).requires_grad_()
    loss = get_loss(name, **hp)

    def f(a, b):
        return loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss

    assert torch.autograd.gradcheck(f, (pw, pl), eps=1e-6, atol=1e-6)


def test_gradcheck_bco_pair_in_eval_mode():
    x = seq_inputs(12)
    loss = get_loss("bco_pair", beta=0.3)
    loss(x)  # one training update, then freeze the running mean
    loss.training = False
    pw = x.policy_chosen_logps.clone().requires_grad_()
    pl = x.policy_rejected_logps.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss, (pw, pl))
