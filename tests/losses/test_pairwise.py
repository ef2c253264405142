"""Losses of the DPO margin (``dpokit.losses.pairwise``): values against independent NumPy code at random
inputs and at |beta*h| = 50, float64 gradchecks, and the identities that tie DPO's relatives to it."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss, parse_loss_expression

from .references import (
    standard_tests,
    B, extreme_inputs, np_logsig, np_view, seq_inputs, wide_inputs, ref_cdpo, ref_discopop, ref_dpo, ref_exo, ref_hinge, ref_ipo, ref_rdpo, ref_sigmoid_norm, ref_sft, ref_simpo
)

CASES = [
    ("dpo", {}, ref_dpo),
    ("dpo", {"beta": 0.5}, ref_dpo),
    ("ipo", {}, ref_ipo),
    ("ipo", {"length_normalize": False, "beta": 0.3}, ref_ipo),
    ("cdpo", {}, ref_cdpo),
    ("rdpo", {"eps": 0.25}, ref_rdpo),
    ("hinge", {}, ref_hinge),
    ("exo", {}, ref_exo),
    ("exo", {"eps": 0.1, "beta": 0.5}, ref_exo),
    ("discopop", {}, ref_discopop),
    ("discopop", {"tau": 0.5, "beta": 0.1}, ref_discopop),
    ("sigmoid_norm", {}, ref_sigmoid_norm),
]
GRAD_CASES = [("dpo", {}), ("exo", {"beta": 0.5}), ("discopop", {"beta": 0.2, "tau": 0.3}), ("sigmoid_norm", {"beta": 2.0}),
              ("ipo", {}), ("hinge", {"beta": 0.01})]


test_value_random, test_value_extreme_margin, test_gradcheck = standard_tests(CASES, GRAD_CASES)


def test_extreme_margin_limits():
    """At beta*h = +50 the logistic-type losses vanish; at -50 they grow linearly (about 50)."""
    x = extreme_inputs(0.1, 50.0)
    for loss in (get_loss("dpo"), get_loss("fdpo"), get_loss("phi_dpo", gamma=0.0), get_loss("phi_dpo")):
        out = loss(x).loss
        assert out[0] < 1e-20
        assert abs(out[1].item() - 50.0) < 1e-9


def test_discopop_no_nan_where_naive_form_fails():
    x = extreme_inputs(0.05, 2000.0)  # z = -2000: sig(z/tau) = 0 and exp(-z) = inf in a naive form
    out = get_loss("discopop")(x).loss
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out[1].item(), 2000.0, rtol=1e-12)


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


# ---- the core losses on wide-spread inputs (sums around -10, lengths 1..19) ---------------------
CORE = {
    "dpo": (dict(beta=0.1), ref_dpo),
    "cdpo": (dict(beta=0.2, eps=0.3), ref_cdpo),
    "rdpo": (dict(beta=0.2, eps=0.3), ref_rdpo),
    "hinge": (dict(beta=0.3), ref_hinge),
    "ipo": (dict(beta=0.1), ref_ipo),
    "simpo": (dict(beta=2.0, gamma=0.7), ref_simpo),
    "sft": (dict(), ref_sft),
}


@pytest.mark.parametrize("name", sorted(CORE))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_core_value_against_numpy(name, seed):
    hparams, reference = CORE[name]
    inputs = wide_inputs(seed)
    ours = get_loss(name, **hparams)(inputs).loss.numpy()
    np.testing.assert_allclose(ours, reference(np_view(inputs), **hparams), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "rdpo", "simpo"])
def test_core_extreme_margins_stay_finite_and_exact(name):
    hparams, reference = CORE[name]
    inputs = wide_inputs(5, scale=300.0)  # |beta * h| far beyond 50
    out = get_loss(name, **hparams)(inputs).loss
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), reference(np_view(inputs), **hparams), rtol=1e-9)


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_gradcheck(name):
    hparams, _ = CORE[name]
    base = wide_inputs(7, batch=4)
    names = ["policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"]
    tensors = [getattr(base, n).clone().requires_grad_(True) for n in names]
    if name == "hinge":  # keep away from the kink at beta*h = 1
        tensors[0] = (tensors[0].detach() - 20).requires_grad_(True)
    loss = get_loss(name, **hparams)

    def fn(*values):
        return loss(base.replace(**dict(zip(names, values)))).loss

    assert torch.autograd.gradcheck(fn, tensors)


def test_core_identities_and_aliases():
    inputs = wide_inputs(11)
    dpo = get_loss("dpo", beta=0.3)(inputs).loss
    torch.testing.assert_close(get_loss("rdpo", beta=0.3, eps=0.0)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("cdpo", beta=0.3, eps=0.0)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("sigmoid", beta=0.3)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("robust", beta=0.3, eps=0.0)(inputs).loss, dpo)
    # IPO without length normalisation uses the raw margin
    raw = get_loss("ipo", beta=0.5, length_normalize=False)(inputs).loss
    torch.testing.assert_close(raw, (inputs.margin() - 1.0) ** 2)


def test_metrics_follow_trl_names_and_values():
    inputs = wide_inputs(3)
    out = get_loss("dpo", beta=0.5)(inputs)
    chosen = 0.5 * (inputs.policy_chosen_logps - inputs.reference_chosen_logps)
    rejected = 0.5 * (inputs.policy_rejected_logps - inputs.reference_rejected_logps)
    torch.testing.assert_close(out.metrics["rewards/chosen"], chosen.mean())
    torch.testing.assert_close(out.metrics["rewards/margins"], (chosen - rejected).mean())
    assert float(out.metrics["rewards/accuracies"]) == pytest.approx(float((chosen > rejected).double().mean()))
    assert {"rewards/rejected", "logps/chosen", "logps/rejected"} <= set(out.metrics)


def test_composition_is_a_weighted_sum():
    inputs = wide_inputs(4)
    composite = get_loss("dpo + 0.2*sft", beta=0.2)
    expected = get_loss("dpo", beta=0.2)(inputs).loss + 0.2 * get_loss("sft")(inputs).loss
    torch.testing.assert_close(composite(inputs).loss, expected)
    listed = get_loss([{"name": "dpo", "weight": 0.8, "beta": 0.1}, {"name": "sft", "weight": 1.0}])
    torch.testing.assert_close(listed(inputs).loss, 0.8 * get_loss("dpo")(inputs).loss + get_loss("sft")(inputs).loss)
    assert "rewards/margins" in composite(inputs).metrics and "sft/nll" in composite(inputs).metrics
    assert not composite.needs.token_logps and composite.needs.reference


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match="did you mean"):
        get_loss("dop")
    with pytest.raises(ValueError, match="no hyperparameter"):
        get_loss("dpo", bta=0.1)
    with pytest.raises(ValueError, match="accepted by none"):
        get_loss("dpo + sft", gamma=1.0)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_loss_expression("dpo + __import__('os')")
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        get_loss("rdpo", eps=0.5)(wide_inputs(0))
    assert parse_loss_expression("dpo + 0.2*sft") == [(1.0, "dpo"), (0.2, "sft")]


def test_reference_free_loss_needs_no_reference():
    inputs = wide_inputs(2).replace(reference_chosen_logps=None, reference_rejected_logps=None)
    assert torch.isfinite(get_loss("simpo")(inputs).loss).all()
    with pytest.raises(ValueError, match="reference_chosen_logps"):
        get_loss("dpo")(inputs)
