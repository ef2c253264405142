"""Modifiers (LD-DPO, WPO, beta-DPO, MADPO) and the apply_modifiers / build_loss API."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import Needs, apply_modifiers, build_loss, get_loss

from .conftest import make_full_inputs, np_logsig, np_sig


def dpo_np(pw, pl, rw, rl, beta=0.1):
    return -np_logsig(beta * ((pw - rw) - (pl - rl)))


# ---- LD-DPO ----------------------------------------------------------------------------------
def ld_np(tokens, mask, public, alpha):
    out = np.zeros(tokens.shape[0])
    for i in range(tokens.shape[0]):
        k = 0
        for t in range(tokens.shape[1]):
            if mask[i, t]:
                k += 1
                out[i] += tokens[i, t] * (1.0 if k <= public[i] else alpha)
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_ld_alpha_value(alpha, seed):
    x = make_full_inputs(batch=5, T=7, seed=seed)
    f = lambda t: t.numpy()  # noqa: E731
    mw, ml = f(x.chosen_token_mask), f(x.rejected_token_mask)
    public = np.minimum(mw.sum(1), ml.sum(1))
    pw = ld_np(f(x.policy_chosen_token_logps), mw, public, alpha)
    pl = ld_np(f(x.policy_rejected_token_logps), ml, public, alpha)
    rw = ld_np(f(x.reference_chosen_token_logps), mw, public, alpha)
    rl = ld_np(f(x.reference_rejected_token_logps), ml, public, alpha)
    got = apply_modifiers(get_loss("dpo"), {"ld_alpha": alpha})(x).loss.numpy()
    np.testing.assert_allclose(got, dpo_np(pw, pl, rw, rl), rtol=1e-10)
    # TRL <= v0.25: policy only
    got_p = apply_modifiers(get_loss("dpo"), {"ld_alpha": {"alpha": alpha, "apply_to_reference": False}})(x).loss
    np.testing.assert_allclose(got_p.numpy(), dpo_np(pw, pl, f(x.reference_chosen_logps), f(x.reference_rejected_logps)),
                               rtol=1e-10)


def test_ld_alpha_one_is_the_plain_loss_and_it_composes():
    x = make_full_inputs(seed=3)
    for name in ("dpo", "ipo", "simpo", "dpo + 0.2*sft"):
        base = get_loss(name)
        torch.testing.assert_close(apply_modifiers(base, {"ld_alpha": 1.0})(x).loss, base(x).loss)
    # padding inside the mask (non-contiguous completion tokens) still counts tokens in order
    assert apply_modifiers("dpo", {"ld_dpo": 0.5}).needs.token_logps


def test_ld_alpha_needs_reference_tokens():
    x = make_full_inputs(seed=0).replace(reference_chosen_token_logps=None)
    with pytest.raises(ValueError, match="per-token"):
        apply_modifiers("dpo", {"ld_alpha": 0.5})(x)


# ---- WPO ---------------------------------------------------------------------------------------
def wpo_np(x, clamp=True):
    def mean_aligned(which):
        lp = getattr(x, f"policy_{which}_token_logps").numpy()
        m = getattr(x, f"{which}_token_mask").numpy()
        s = x.token_stats[f"{which}/sum_p2"].numpy()
        out = []
        for i in range(lp.shape[0]):
            vals = [lp[i, t] - math.log(s[i, t]) for t in range(lp.shape[1]) if m[i, t]]
            out.append(sum(vals) / len(vals))
        return np.array(out)

    w = np.exp(mean_aligned("chosen")) * np.exp(mean_aligned("rejected"))
    return np.minimum(w, 1.0) if clamp else w


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wpo_value(clamp, seed):
    x = make_full_inputs(batch=5, T=6, seed=seed)
    # make some weights exceed 1 so the clamp matters
    x.token_stats["chosen/sum_p2"] = x.token_stats["chosen/sum_p2"] * 0.01
    w = wpo_np(x, clamp)
    assert clamp or (w > 1).any()
    got = apply_modifiers("dpo", {"wpo": {"clamp": clamp}})(x).loss.numpy()
    np.testing.assert_allclose(got, w * get_loss("dpo")(x).loss.numpy(), rtol=1e-10)


def test_wpo_weight_carries_no_gradient():
    x = make_full_inputs(seed=4)
    lp = x.policy_chosen_token_logps.clone().requires_grad_()
    pw = x.policy_chosen_logps.clone().requires_grad_()
    y = x.replace(policy_chosen_token_logps=lp, policy_chosen_logps=pw)
    out = apply_modifiers("dpo", {"use_weighting": True})(y).loss
    g_pw, g_lp = torch.autograd.grad(out.sum(), (pw, lp), allow_unused=True)
    assert g_lp is None  # the weight is built from the token log-probs but detached
    pw2 = x.policy_chosen_logps.clone().requires_grad_()
    g_dpo = torch.autograd.grad(get_loss("dpo")(x.replace(policy_chosen_logps=pw2)).loss.sum(), pw2)[0]
    torch.testing.assert_close(g_pw, torch.tensor(wpo_np(x)) * g_dpo)


# ---- MADPO -------------------------------------------------------------------------------------
def madpo_np(m, c_max=2.0, c_min=0.5, lmbda=1.0, tau=math.log(0.999 / 0.001)):
    c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * np.exp(lmbda * (np.abs(m) - tau)))
    w = np_sig(c * m) / np_sig(m)
    return np.where(m > -tau, w, 1.0)


def test_madpo_value_and_shape():
    x = make_full_inputs(batch=8, seed=1)
    m = torch.tensor([-20.0, -7.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0], dtype=torch.float64)
    x.extras = {"rm_margin": m}
    got = apply_modifiers("dpo", {"madpo": True})(x).loss.numpy()
    np.testing.assert_allclose(got, madpo_np(m.numpy()) * get_loss("dpo")(x).loss.numpy(), rtol=1e-10)
    # c(|m| = tau) = 1, so the weight is continuous at m = -tau
    tau = math.log(0.999 / 0.001)
    assert abs(madpo_np(np.array([-tau + 1e-9]))[0] - 1.0) < 1e-6
    w = madpo_np(np.array([0.5, 20.0]))
    assert w[0] > 1.0 and w[1] < 1.0  # hard pair up-weighted, easy pair down-weighted
    x2 = make_full_inputs(batch=4, seed=2)
    x2.extras = {"rm_margin": torch.tensor([1.0, -1.0, 3.0, 0.2], dtype=torch.float64)}
    out = apply_modifiers("ipo", {"madpo": {"c_max": 3.0, "c_min": 1 / 3}})(x2).loss.numpy()
    np.testing.assert_allclose(out, madpo_np(np.array([1.0, -1.0, 3.0, 0.2]), 3.0, 1 / 3) * get_loss("ipo")(x2).loss.numpy(),
                               rtol=1e-10)


# ---- beta-DPO ----------------------------------------------------------------------------------
def test_beta_dpo_without_filtering_matches_formula():
    x = make_full_inputs(batch=6, seed=5)
    loss = apply_modifiers(get_loss("dpo", beta=0.1), {"beta_dpo": {"rho": 0.0, "a": 0.6}})
    out = loss(x)
    h = x.margin().numpy()
    m0 = 0.1 * h.mean()
    s0 = 0.1 * h.std(ddof=1)
    beta = max(0.1 * (1 + 0.6 * (h.mean() - m0)), 1e-3)
    np.testing.assert_allclose(out.loss.numpy(), -np_logsig(beta * h), rtol=1e-10)
    st = loss.state_dict()["modifiers"]["beta_dpo"]
    np.testing.assert_allclose([st["gap_mean"], st["gap_std"]], [m0, s0], rtol=1e-12)
    np.testing.assert_allclose(out.metrics["beta_dpo/beta"].item(), beta, rtol=1e-12)
    # second step: EMA continues
    x2 = make_full_inputs(batch=6, seed=6)
    loss(x2)
    h2 = x2.margin().numpy()
    st2 = loss.state_dict()["modifiers"]["beta_dpo"]
    np.testing.assert_allclose(st2["gap_mean"], 0.9 * m0 + 0.1 * h2.mean(), rtol=1e-12)
    np.testing.assert_allclose(st2["gap_std"], 0.9 * s0 + 0.1 * h2.std(ddof=1), rtol=1e-12)


def test_beta_dpo_filtering_and_state():
    torch.manual_seed(0)
    x = make_full_inputs(batch=10, seed=7)
    loss = apply_modifiers(get_loss("dpo"), {"beta_dpo": True})
    out = loss(x)
    selected = out.loss != 0
    assert int(selected.sum()) == int(10 * (1 - 0.2))
    beta = out.metrics["beta_dpo/beta"].item()
    h = x.margin()
    # the batch mean equals the mean DPO loss (at the adapted beta) over the selected examples
    expected = (-torch.nn.functional.logsigmoid(beta * h))[selected].mean()
    torch.testing.assert_close(out.loss.mean(), expected)
    # evaluation: no state change, nothing dropped
    loss.training = False
    state = loss.state_dict()
    ev = loss(x)
    assert loss.state_dict() == state
    assert (ev.loss != 0).all()
    # resume: a fresh loss given the state computes the same eval loss
    fresh = apply_modifiers(get_loss("dpo"), {"beta_dpo": True})
    fresh.load_state_dict(state)
    fresh.training = False
    torch.testing.assert_close(fresh(x).loss, ev.loss)


def test_beta_dpo_beta_is_detached():
    """The gradient is DPO's at the adapted beta: beta itself carries no gradient (official code)."""
    x = make_full_inputs(batch=4, seed=8)
    loss = apply_modifiers(get_loss("dpo"), {"beta_dpo": True})
    loss(x)
    loss.training = False
    pw = x.policy_chosen_logps.clone().requires_grad_()
    out = loss(x.replace(policy_chosen_logps=pw))
    g = torch.autograd.grad(out.loss.sum(), pw)[0]
    beta = out.metrics["beta_dpo/beta"].item()
    pw2 = x.policy_chosen_logps.clone().requires_grad_()
    g_ref = torch.autograd.grad(get_loss("dpo", beta=beta)(x.replace(policy_chosen_logps=pw2)).loss.sum(), pw2)[0]
    torch.testing.assert_close(g, g_ref)
    assert torch.autograd.gradcheck(
        lambda a: get_loss("dpo", beta=beta)(x.replace(policy_chosen_logps=a)).loss, (pw2,))


# ---- API -----------------------------------------------------------------------------------------
def test_needs_union_and_metadata():
    loss = apply_modifiers(get_loss("dpo"), {"ld_alpha": 0.5, "wpo": True, "madpo": True, "beta_dpo": True})
    n = loss.needs
    assert isinstance(n, Needs)
    assert n.reference and n.token_logps and n.batch_coupled
    assert n.token_stats == ("sum_p2",) and n.extras == ("rm_margin",)
    assert loss.name == "dpo[ld_alpha,beta_dpo,wpo,madpo]"
    assert "ld_alpha(alpha=0.5" in loss.describe()
    assert not apply_modifiers(get_loss("simpo"), {"wpo": True}).needs.reference


def test_apply_modifiers_returns_plain_loss_when_empty():
    base = get_loss("dpo")
    assert apply_modifiers(base, {}) is base
    assert apply_modifiers(base, {"wpo": False, "ld_alpha": None}) is base


def test_build_loss_config_shapes():
    x = make_full_inputs(seed=9)
    a = build_loss({"name": "dpo", "beta": 0.2, "modifiers": {"ld_alpha": 0.5}})
    b = apply_modifiers(get_loss("dpo", beta=0.2), {"ld_alpha": {"alpha": 0.5}})
    torch.testing.assert_close(a(x).loss, b(x).loss)
    c = build_loss({"name": "dpo + 0.2*sft", "beta": 0.2, "modifiers": {"wpo": True}})
    assert c.needs.token_stats == ("sum_p2",)
    assert torch.isfinite(c(x).loss).all()
    d = build_loss({"components": [{"name": "dpo", "weight": 0.8}, {"name": "bco_pair", "weight": 0.2}]})
    assert d.name == "0.8*dpo + 0.2*bco_pair"
    assert build_loss("dpo").name == "dpo"


def test_modifier_errors():
    with pytest.raises(KeyError):
        apply_modifiers("dpo", {"no_such_modifier": True})
    with pytest.raises(ValueError, match="hyperparameter"):
        apply_modifiers("dpo", {"wpo": {"clip": True}})
    with pytest.raises(ValueError):
        apply_modifiers("dpo", {"wpo": 0.5})  # no shorthand for wpo
    with pytest.raises(ValueError, match="sort"):
        apply_modifiers("aot", {"wpo": True})
    with pytest.raises(ValueError, match="beta_dpo"):
        apply_modifiers("dpo + 0.1*sft", {"beta_dpo": True})
    with pytest.raises(ValueError, match="beta_dpo"):
        apply_modifiers("bco_pair", {"beta_dpo": True})
    with pytest.raises(ValueError, match="pairwise"):
        apply_modifiers("kto", {"wpo": True})
    with pytest.raises(ValueError):
        apply_modifiers("dpo", {"ld_alpha": 1.5})


def test_state_dict_round_trip_with_stateful_base():
    x = make_full_inputs(seed=10)
    loss = apply_modifiers(get_loss("bco_pair"), {"ld_alpha": 0.5})
    loss(x)
    state = loss.state_dict()
    assert state["loss"]["count"] > 0
    other = apply_modifiers(get_loss("bco_pair"), {"ld_alpha": 0.5})
    other.load_state_dict(state)
    assert other.state_dict() == state
    other.training = False
    loss.training = False
    torch.testing.assert_close(other(x).loss, loss(x).loss)


def test_build_loss_strict_rules():
    with pytest.raises(ValueError, match="give either 'name' or 'components', not both"):
        build_loss({"name": "dpo", "components": [{"name": "sft"}]})
    with pytest.raises(ValueError, match=r"'name' is required \(e.g. name: dpo\)"):
        build_loss({"beta": 0.1})
    with pytest.raises(ValueError, match="'name' is required"):
        build_loss({"modifiers": {"wpo": True}})
    with pytest.raises(ValueError, match="no hyperparameter"):
        build_loss({"name": "dpo", "bta": 0.1})
    with pytest.raises(ValueError, match="modifiers"):
        build_loss({"name": "dpo", "modifiers": ["wpo"]})
    assert build_loss({"name": "dpo", "modifiers": {}}).name == "dpo"


def test_modifier_behaviour_is_declared_not_named():
    from dpokit.losses import modifiers

    flags = {m.name: (m.impl.per_example, m.impl.runs_loss) for m in modifiers.list_modifiers()}
    assert flags == {"beta_dpo": (True, True), "ld_alpha": (False, False), "madpo": (True, False), "wpo": (True, False)}
    assert not get_loss("aot").needs.per_example and get_loss("dpo").needs.per_example
    assert not get_loss("dpo + aot").needs.per_example
    assert apply_modifiers("aot", {"ld_alpha": 0.5}).needs.token_logps  # a transform needs no per-example loss
    with pytest.raises(ValueError, match="not per example"):
        apply_modifiers("dpo + 0.5*aot_unpaired", {"madpo": True})
