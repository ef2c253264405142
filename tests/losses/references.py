"""Independent NumPy references for the loss tests, and the shared checks every family runs.

Each ``ref_<loss>(d, **hparams)`` computes a loss from a NumPy view ``d`` of the inputs
(:func:`np_view`) without dpokit's helpers. ``check_value_random`` / ``check_value_extreme`` /
``check_gradcheck`` run a registered loss against such a reference.
"""

import math

import numpy as np
import torch

from dpokit.losses import LossInputs, get_loss, get_spec


def to_numpy(t):
    return None if t is None else t.detach().cpu().numpy().astype(np.float64)


def np_logsig(x):
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def np_sig(x):
    return np.exp(np_logsig(x))


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


def wide_inputs(seed, batch=6, scale=3.0, dtype=torch.float64):
    """Sums spread around -10 with standard deviation ``scale`` (300 reaches |beta*h| far beyond 50)."""
    g = torch.Generator().manual_seed(seed)
    t = lambda: (torch.randn(batch, generator=g, dtype=dtype) * scale - 10.0)  # noqa: E731
    lengths = torch.randint(1, 20, (2, batch), generator=g).to(dtype)
    return LossInputs(policy_chosen_logps=t(), policy_rejected_logps=t(), reference_chosen_logps=t(),
                      reference_rejected_logps=t(), chosen_lengths=lengths[0], rejected_lengths=lengths[1])


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


def ref_simpo(d, beta=2.0, gamma=0.5, label_smoothing=0.0):
    z = beta * (d["pw"] / d["lw"] - d["pl"] / d["ll"]) - gamma
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z)


def ref_sft(d, length_normalize=True):
    return -d["pw"] / d["lw"] if length_normalize else -d["pw"]


# ---- the checks every family runs --------------------------------------------------------------
def case_ids(cases):
    return [f"{c[0]}-{i}" for i, c in enumerate(cases)]


def beta_for(name, hp):
    spec = get_spec(name)
    return hp.get("beta", hp.get("beta_w", spec.defaults.get("beta", spec.defaults.get("beta_w"))))


def check_value_random(name, hp, ref, seed):
    x = seq_inputs(seed)
    got = get_loss(name, **hp)(x).loss.numpy()
    np.testing.assert_allclose(got, ref(np_view(x), **hp), rtol=1e-9, atol=1e-12)


def check_value_extreme(name, hp, ref, dtype):
    """At |beta*h| = 50: finite in fp64 and fp32, and equal to the reference in fp64."""
    x = extreme_inputs(beta_for(name, hp), 50.0, dtype=dtype)
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all(), got
    if dtype == torch.float64:
        np.testing.assert_allclose(got.numpy(), ref(np_view(x), **hp), rtol=1e-9, atol=1e-9)


def check_gradcheck(name, hp):
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


def standard_tests(cases, grad_cases):
    """The three tests every family module runs on its cases: the value against the NumPy reference at
    three seeds, at an extreme margin in float64 and float32, and float64 gradcheck. A module binds
    them to its own names: ``test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(...)``."""
    import pytest

    @pytest.mark.parametrize("name,hp,ref", cases, ids=case_ids(cases))
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_value_random(name, hp, ref, seed):
        check_value_random(name, hp, ref, seed)

    @pytest.mark.parametrize("name,hp,ref", cases, ids=case_ids(cases))
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_value_extreme_margin(name, hp, ref, dtype):
        check_value_extreme(name, hp, ref, dtype)

    @pytest.mark.parametrize("name,hp", grad_cases, ids=case_ids(grad_cases))
    def test_gradcheck(name, hp):
        check_gradcheck(name, hp)

    return test_value_random, test_value_extreme_margin, test_gradcheck
