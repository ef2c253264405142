"""BideDPO (``bide_dpo``): the value against a NumPy formula at several inputs, float64 gradcheck,
the identities with ``dpo``, the partial marks."""

import inspect

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss, get_spec

B = 8


def rows(seed, kinds, dtype=torch.float64):
    """Pair fields as the diffusion scorer writes them (lp = -mse) plus the MSEs and the pair kinds."""
    g = torch.Generator().manual_seed(seed)
    mse = {k: 0.05 + 0.2 * torch.rand(len(kinds), generator=g, dtype=dtype) for k in ("tw", "tl", "rw", "rl")}
    ones = torch.ones(len(kinds), dtype=dtype)
    x = LossInputs(policy_chosen_logps=-mse["tw"], policy_rejected_logps=-mse["tl"],
                   reference_chosen_logps=-mse["rw"], reference_rejected_logps=-mse["rl"],
                   chosen_lengths=ones, rejected_lengths=ones,
                   extras={"bide_pair": torch.tensor(kinds, dtype=dtype)})
    return x, {k: v.numpy() for k, v in mse.items()}, np.asarray(kinds, dtype=np.float64)


def np_bide(m, kinds, beta, text_weight=1.0, condition_weight=1.0, balance="none"):
    """Per-row loss written out: Diffusion-DPO per pair from the MSEs (diffusers form), then the
    per-kind means and weights."""
    model_diff = m["tw"] - m["tl"]
    ref_diff = m["rw"] - m["rl"]
    z = beta * (ref_diff - model_diff)
    per = np.logaddexp(0.0, -z)  # -log sigmoid(z)
    weights = {0: text_weight, 1: condition_weight}
    means = {k: per[kinds == k].mean() for k in (0, 1) if (kinds == k).any()}
    if balance == "loss_ratio":
        total = sum(means.values())
        weights = {k: weights[k] * len(means) * means[k] / total if k in means else weights[k] for k in (0, 1)}
    out = np.zeros_like(per)
    for i, k in enumerate(kinds.astype(int)):
        out[i] = weights[k] * len(kinds) / (kinds == k).sum() * per[i]
    return out, means, weights


KIND_SETS = [[0, 1, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1, 0, 1]]


@pytest.mark.parametrize("balance", ["none", "loss_ratio"])
@pytest.mark.parametrize("beta,wt,wc", [(2.0, 1.0, 1.0), (20.0, 0.7, 1.5), (60.0, 2.0, 0.25)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_against_numpy(balance, beta, wt, wc, seed):
    kinds = KIND_SETS[seed]
    x, m, k = rows(seed, kinds)
    out = get_loss("bide_dpo", beta=beta, text_weight=wt, condition_weight=wc, balance=balance)(x)
    expected, means, weights = np_bide(m, k, beta, wt, wc, balance)
    np.testing.assert_allclose(out.loss.numpy(), expected, rtol=1e-10, atol=1e-12)
    # the batch mean is w_t L_t + w_c L_c
    np.testing.assert_allclose(out.loss.mean().item(), sum(weights[j] * means[j] for j in means), rtol=1e-10)
    np.testing.assert_allclose(out.metrics["bide/text_loss"].item(), means[0], rtol=1e-10)
    np.testing.assert_allclose(out.metrics["bide/condition_weight"].item(), weights[1], rtol=1e-10)


def test_gradcheck_float64():
    x, _, _ = rows(5, KIND_SETS[0])
    loss = get_loss("bide_dpo", beta=5.0, text_weight=0.8, condition_weight=1.3)
    pw = x.policy_chosen_logps.clone().requires_grad_()
    pl = x.policy_rejected_logps.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss,
                                    (pw, pl), eps=1e-6, atol=1e-6)


def test_loss_ratio_weights_carry_no_gradient():
    """The balanced loss's gradient is that of the fixed-weight loss at the weights it computed (which
    passes gradcheck above): no gradient flows through sg(L_k)."""
    x, _, _ = rows(5, KIND_SETS[0])
    pw = x.policy_chosen_logps.clone().requires_grad_()
    out = get_loss("bide_dpo", beta=5.0, text_weight=0.8, condition_weight=1.3, balance="loss_ratio")(
        x.replace(policy_chosen_logps=pw))
    (grad,) = torch.autograd.grad(out.loss.sum(), pw)
    fixed = get_loss("bide_dpo", beta=5.0, text_weight=out.metrics["bide/text_weight"].item(),
                     condition_weight=out.metrics["bide/condition_weight"].item())
    pw2 = x.policy_chosen_logps.clone().requires_grad_()
    (expected,) = torch.autograd.grad(fixed(x.replace(policy_chosen_logps=pw2)).loss.sum(), pw2)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert out.metrics["bide/text_weight"].item() != pytest.approx(0.8)


@pytest.mark.parametrize("balance", ["none", "loss_ratio"])
@pytest.mark.parametrize("kind", [0, 1])
def test_one_kind_only_is_diffusion_dpo(balance, kind):
    x, _, _ = rows(3, [kind] * B)
    weight = {"text_weight": 1.7} if kind == 0 else {"condition_weight": 1.7}
    got = get_loss("bide_dpo", beta=30.0, balance=balance, **weight)(x).loss
    dpo = get_loss("dpo", beta=30.0)(x).loss
    torch.testing.assert_close(got, 1.7 * dpo, rtol=1e-12, atol=1e-12)


def test_zero_condition_weight_is_dpo_on_the_text_pairs():
    kinds = KIND_SETS[0]
    x, _, k = rows(4, kinds)
    got = get_loss("bide_dpo", beta=10.0, condition_weight=0.0)(x).loss
    dpo = get_loss("dpo", beta=10.0)(x).loss
    text = torch.tensor(k == 0)
    torch.testing.assert_close(got.mean(), dpo[text].mean(), rtol=1e-12, atol=1e-12)
    assert torch.all(got[~text] == 0)


def test_swapping_the_kinds_with_their_weights_changes_nothing():
    x, _, k = rows(6, KIND_SETS[2])
    swapped = x.replace(extras={"bide_pair": torch.tensor(1.0 - k)})
    for balance in ("none", "loss_ratio"):
        a = get_loss("bide_dpo", beta=8.0, text_weight=0.5, condition_weight=2.0, balance=balance)(x).loss
        b = get_loss("bide_dpo", beta=8.0, text_weight=2.0, condition_weight=0.5, balance=balance)(swapped).loss
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_policy_equal_reference_gives_log_2_times_the_weights():
    x, _, _ = rows(7, KIND_SETS[0])
    same = x.replace(policy_chosen_logps=x.reference_chosen_logps, policy_rejected_logps=x.reference_rejected_logps)
    out = get_loss("bide_dpo", beta=50.0, balance="loss_ratio")(same)
    torch.testing.assert_close(out.loss.mean(), torch.tensor(2 * np.log(2.0), dtype=torch.float64))


def test_errors_and_marks():
    x, _, _ = rows(0, KIND_SETS[0])
    with pytest.raises(ValueError, match="bide_pair"):
        get_loss("bide_dpo")(x.replace(extras={}))
    with pytest.raises(ValueError, match="0 \\(text pair\\) or 1"):
        get_loss("bide_dpo")(x.replace(extras={"bide_pair": torch.full((B,), 2.0, dtype=torch.float64)}))
    with pytest.raises(ValueError, match="balance"):
        get_loss("bide_dpo", balance="gradnorm")(x)
    spec = get_spec("bide_dpo")
    doc = inspect.getdoc(spec.impl)
    assert spec.verified == "partial" and "[partial]" in doc and "PARTIAL" in doc
    assert spec.needs.extras == ("bide_pair",) and spec.needs.data == "pairs" and spec.needs.reference
