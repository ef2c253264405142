"""Unpaired losses (KTO, BCO, APO-zero unpaired): values, state, split-pair identities, gradchecks."""

import warnings

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss, kto_weight_warning

from .conftest import np_logsig, np_sig

B = 8


def unpaired(seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lp = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    lr = lp + scale * 5 * torch.randn(B, generator=g, dtype=dtype)
    labels = torch.rand(B, generator=g) < 0.5
    labels[0], labels[1] = True, False
    klp = -(1 + 30 * torch.rand(B, generator=g, dtype=dtype))
    klr = klp + 2 * torch.randn(B, generator=g, dtype=dtype)
    return LossInputs(policy_logps=lp, reference_logps=lr, labels=labels,
                      lengths=torch.randint(1, 20, (B,), generator=g).to(dtype),
                      kl_policy_logps=klp, kl_reference_logps=klr)


def view(x):
    f = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return f(x.policy_logps) - f(x.reference_logps), x.labels.numpy(), f(x.kl_policy_logps) - f(x.kl_reference_logps)


def ref_kto(x, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    r, lab, kl = view(x)
    z = max(kl.mean(), 0.0)
    return np.where(lab, desirable_weight * (1 - np_sig(beta * (r - z))), undesirable_weight * (1 - np_sig(beta * (z - r))))


def ref_apo_unpaired(x, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    r, lab, _ = view(x)
    return np.where(lab, desirable_weight * (1 - np_sig(beta * r)), undesirable_weight * np_sig(beta * r))


CASES = [("kto", {}, ref_kto), ("kto", {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.7}, ref_kto),
         ("apo_zero_unpaired", {}, ref_apo_unpaired), ("apo_zero_unpaired", {"desirable_weight": 2.0}, ref_apo_unpaired)]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    x = unpaired(seed)
    np.testing.assert_allclose(get_loss(name, **hp)(x).loss.numpy(), ref(x, **hp), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_value_extreme(name, hp, ref):
    beta = hp.get("beta", 0.1)
    x = unpaired(3)
    s = torch.tensor([1.0, -1.0] * (B // 2), dtype=torch.float64)
    x = x.replace(policy_logps=x.reference_logps + s * 50.0 / beta)
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), ref(x, **hp), rtol=1e-10, atol=1e-14)


def test_kto_kl_clamp_and_no_gradient_through_kl():
    x = unpaired(4)
    # mismatched pairs more likely under the reference: KL estimate negative -> clamped to 0
    x = x.replace(kl_policy_logps=x.kl_reference_logps - 3.0)
    out = get_loss("kto")(x)
    assert out.metrics["kl"].item() == 0.0
    klp = x.kl_policy_logps.clone().requires_grad_()
    lp = x.policy_logps.clone().requires_grad_()
    get_loss("kto")(x.replace(kl_policy_logps=klp + 6.0, policy_logps=lp)).loss.sum().backward()
    assert klp.grad is None or torch.all(klp.grad == 0)
    assert lp.grad is not None and torch.all(lp.grad != 0)


def split_pairs(pw, pl, rw, rl):
    """Pairs -> unpaired examples: chosen first (desirable), then rejected (undesirable).

    The KL batch pairs prompt i with completion i-1 (rotation by one), as the engine does."""
    lp = torch.cat([pw, pl])
    lr = torch.cat([rw, rl])
    labels = torch.cat([torch.ones_like(pw, dtype=torch.bool), torch.zeros_like(pl, dtype=torch.bool)])
    return LossInputs(policy_logps=lp, reference_logps=lr, labels=labels, kl_policy_logps=torch.roll(lp, 1) - 1.0,
                      kl_reference_logps=torch.roll(lr, 1) - 2.0)


def test_unpaired_losses_run_on_split_pairs():
    g = torch.Generator().manual_seed(0)
    pw, pl, rw, rl = (-(1 + 20 * torch.rand(5, generator=g, dtype=torch.float64)) for _ in range(4))
    pairs = LossInputs(policy_chosen_logps=pw, policy_rejected_logps=pl, reference_chosen_logps=rw,
                       reference_rejected_logps=rl)
    x = split_pairs(pw, pl, rw, rl)
    kto = get_loss("kto")(x).loss
    assert kto.shape == (10,) and torch.isfinite(kto).all()
    np.testing.assert_allclose(kto.numpy(), ref_kto(x), rtol=1e-10)
    # unpaired APO-zero on split pairs: the two halves add up to paired APO-zero
    apo_u = get_loss("apo_zero_unpaired")(x).loss
    torch.testing.assert_close(apo_u[:5] + apo_u[5:], get_loss("apo_zero")(pairs).loss)
    # unpaired BCO on split pairs: same running mean, the halves add up to paired BCO
    bco_u = get_loss("bco", beta=0.3)(x).loss
    torch.testing.assert_close(bco_u[:5] + bco_u[5:], get_loss("bco_pair", beta=0.3)(pairs).loss)


def test_bco_running_mean_state_and_udm():
    beta = 0.1
    x1, x2 = unpaired(0), unpaired(1)
    loss = get_loss("bco")
    r1, lab1, _ = view(x1)
    d1 = np.mean(beta * r1)
    np.testing.assert_allclose(loss(x1).loss.numpy(),
                               np.where(lab1, -np_logsig(beta * r1 - d1), -np_logsig(-(beta * r1 - d1))), rtol=1e-10)
    state = loss.state_dict()
    r2, lab2, _ = view(x2)
    d2 = np.mean(np.concatenate([beta * r1, beta * r2]))
    out2 = loss(x2).loss.numpy()
    np.testing.assert_allclose(out2, np.where(lab2, -np_logsig(beta * r2 - d2), -np_logsig(-(beta * r2 - d2))),
                               rtol=1e-10)
    loss.training = False
    frozen = loss.state_dict()
    loss(x1)
    assert loss.state_dict() == frozen
    resumed = get_loss("bco")
    resumed.load_state_dict(state)
    np.testing.assert_allclose(resumed(x2).loss.numpy(), out2, rtol=1e-12)
    # UDM weights: undesirable examples only, clamped to [0.5, 10]
    w = torch.tensor([0.1, 0.2, 3.0, 50.0, 1.0, 7.0, 0.4, 12.0], dtype=torch.float64)
    udm = get_loss("bco", udm=True)
    plain = get_loss("bco")
    a = udm(x1.replace(extras={"udm_weight": w})).loss.numpy()
    b = plain(x1).loss.numpy()
    expected = np.where(lab1, b, b * np.clip(w.numpy(), 0.5, 10.0))
    np.testing.assert_allclose(a, expected, rtol=1e-12)
    with pytest.raises(ValueError):
        get_loss("bco", udm=True)(x1)


def test_kto_weight_warning():
    assert kto_weight_warning(100, 100, 1.0, 1.0) is None
    assert kto_weight_warning(120, 100, 1.0, 1.0) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = kto_weight_warning(100, 400, 1.0, 1.0)
    assert msg and "desirable_weight" in msg and caught
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert kto_weight_warning(400, 100) is not None
        assert kto_weight_warning(0, 10) is not None


@pytest.mark.parametrize("name,hp", [("kto", {"beta": 0.3}), ("apo_zero_unpaired", {"beta": 0.2})])
def test_gradcheck(name, hp):
    x = unpaired(6)
    lp = x.policy_logps.clone().requires_grad_()
    loss = get_loss(name, **hp)
    assert torch.autograd.gradcheck(lambda a: loss(x.replace(policy_logps=a)).loss, (lp,))


def test_gradcheck_bco_eval():
    x = unpaired(7)
    loss = get_loss("bco", beta=0.3)
    loss(x)
    loss.training = False
    lp = x.policy_logps.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss(x.replace(policy_logps=a)).loss, (lp,))


def test_check_data_hook_reports_kto_class_balance():
    balanced = [True] * 10 + [False] * 9
    assert get_loss("kto").check_data(balanced) == []
    warnings_out = get_loss("kto").check_data([True] * 2 + [False] * 8)
    assert len(warnings_out) == 1 and "outside [1, 4/3]" in warnings_out[0] and "n_desirable=2" in warnings_out[0]
    # the weights count: desirable_weight 4 fixes 2 vs 8
    assert get_loss("kto", desirable_weight=4.0).check_data([True] * 2 + [False] * 8) == []
    assert "both kinds" in get_loss("apo_zero_unpaired").check_data([True] * 3)[0]
    assert get_loss("bco").check_data([True] * 3) == []  # no class-balance rule for BCO
    assert get_loss("kto").check_data(None) == []
    labels = [True] + [False] * 5
    assert len(get_loss("kto + apo_zero_unpaired").check_data(labels)) == 1  # same weights: one message
    composite = get_loss([{"name": "kto"}, {"name": "apo_zero_unpaired", "desirable_weight": 2.0}])
    assert len(composite.check_data(labels)) == 2
    assert get_loss("dpo").check_data() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the hook returns its messages and raises no warning
        get_loss("kto").check_data([True] * 2 + [False] * 8)


# ---- sft_unpaired: the fine-tuning step of rejection-sampling fine-tuning ---------------------------
def ref_sft_unpaired(x, length_normalize=True):
    lp = x.policy_logps.detach().numpy().astype(np.float64)
    n = np.maximum(x.lengths.numpy().astype(np.float64), 1.0)
    nll = -lp / n if length_normalize else -lp
    return np.where(x.labels.numpy(), nll, 0.0)


@pytest.mark.parametrize("hp", [{}, {"length_normalize": False}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sft_unpaired_value(hp, seed):
    x = unpaired(seed)
    np.testing.assert_allclose(get_loss("sft_unpaired", **hp)(x).loss.numpy(), ref_sft_unpaired(x, **hp),
                               rtol=1e-12, atol=1e-14)


def test_sft_unpaired_equals_pairwise_sft_on_the_chosen():
    x = unpaired(4)
    x.labels[:] = True
    g = torch.Generator().manual_seed(9)
    other = -(1 + 10 * torch.rand(B, generator=g, dtype=torch.float64))
    pairs = LossInputs(policy_chosen_logps=x.policy_logps, policy_rejected_logps=other, chosen_lengths=x.lengths,
                       rejected_lengths=torch.full_like(x.lengths, 3.0))
    for hp in ({}, {"length_normalize": False}):
        torch.testing.assert_close(get_loss("sft_unpaired", **hp)(x).loss, get_loss("sft", **hp)(pairs).loss)


def test_sft_unpaired_gradcheck_and_undesirable_rows():
    x = unpaired(6)
    lp = x.policy_logps.clone().requires_grad_()
    loss = get_loss("sft_unpaired")
    assert torch.autograd.gradcheck(lambda a: loss(x.replace(policy_logps=a)).loss, (lp,))
    loss(x.replace(policy_logps=lp)).loss.sum().backward()
    assert (lp.grad[~x.labels] == 0).all() and (lp.grad[x.labels] != 0).all()
    assert loss.check_data([True] * 4) == []
    assert "2 of 5 examples are labelled undesirable" in loss.check_data([True, False, True, False, True])[0]
