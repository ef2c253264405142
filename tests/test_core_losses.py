"""The core issue's losses against independent NumPy formulas, gradcheck, and composition."""

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss, parse_loss_expression


def np_logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def random_inputs(seed, batch=6, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = lambda: (torch.randn(batch, generator=g, dtype=dtype) * scale - 10.0)
    lengths = torch.randint(1, 20, (2, batch), generator=g).to(dtype)
    return LossInputs(policy_chosen_logps=t(), policy_rejected_logps=t(), reference_chosen_logps=t(),
                      reference_rejected_logps=t(), chosen_lengths=lengths[0], rejected_lengths=lengths[1])


def as_np(x):
    return {k: getattr(x, k).detach().numpy() for k in ("policy_chosen_logps", "policy_rejected_logps",
            "reference_chosen_logps", "reference_rejected_logps", "chosen_lengths", "rejected_lengths")}


def np_margin(a):
    return (a["policy_chosen_logps"] - a["reference_chosen_logps"]) - (a["policy_rejected_logps"] - a["reference_rejected_logps"])


REFERENCES = {
    "dpo": (dict(beta=0.1), lambda a, beta: -np_logsigmoid(beta * np_margin(a))),
    "cdpo": (dict(beta=0.2, eps=0.3), lambda a, beta, eps: -(1 - eps) * np_logsigmoid(beta * np_margin(a))
             - eps * np_logsigmoid(-beta * np_margin(a))),
    "rdpo": (dict(beta=0.2, eps=0.3), lambda a, beta, eps: ((1 - eps) * -np_logsigmoid(beta * np_margin(a))
             - eps * -np_logsigmoid(-beta * np_margin(a))) / (1 - 2 * eps)),
    "hinge": (dict(beta=0.3), lambda a, beta: np.maximum(0.0, 1 - beta * np_margin(a))),
    "ipo": (dict(beta=0.1), lambda a, beta: (
        (a["policy_chosen_logps"] - a["reference_chosen_logps"]) / a["chosen_lengths"]
        - (a["policy_rejected_logps"] - a["reference_rejected_logps"]) / a["rejected_lengths"] - 1 / (2 * beta)) ** 2),
    "simpo": (dict(beta=2.0, gamma=0.7), lambda a, beta, gamma: -np_logsigmoid(
        beta * (a["policy_chosen_logps"] / a["chosen_lengths"] - a["policy_rejected_logps"] / a["rejected_lengths"]) - gamma)),
    "sft": (dict(), lambda a: a["policy_chosen_logps"] / -a["chosen_lengths"]),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_against_numpy(name, seed):
    hparams, reference = REFERENCES[name]
    inputs = random_inputs(seed)
    ours = get_loss(name, **hparams)(inputs).loss.numpy()
    np.testing.assert_allclose(ours, reference(as_np(inputs), **hparams), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "rdpo", "simpo"])
def test_extreme_margins_stay_finite_and_exact(name):
    hparams, reference = REFERENCES[name]
    inputs = random_inputs(5, scale=300.0)  # |beta * h| far beyond 50
    out = get_loss(name, **hparams)(inputs).loss
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), reference(as_np(inputs), **hparams), rtol=1e-9)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradcheck(name):
    hparams, _ = REFERENCES[name]
    base = random_inputs(7, batch=4)
    names = ["policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"]
    tensors = [getattr(base, n).clone().requires_grad_(True) for n in names]
    if name == "hinge":  # keep away from the kink at beta*h = 1
        tensors[0] = (tensors[0].detach() - 20).requires_grad_(True)
    loss = get_loss(name, **hparams)

    def fn(*values):
        return loss(base.replace(**dict(zip(names, values)))).loss

    assert torch.autograd.gradcheck(fn, tensors)


def test_identities():
    inputs = random_inputs(11)
    dpo = get_loss("dpo", beta=0.3)(inputs).loss
    torch.testing.assert_close(get_loss("rdpo", beta=0.3, eps=0.0)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("cdpo", beta=0.3, eps=0.0)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("sigmoid", beta=0.3)(inputs).loss, dpo)
    torch.testing.assert_close(get_loss("robust", beta=0.3, eps=0.0)(inputs).loss, dpo)
    # IPO without length normalisation uses the raw margin
    raw = get_loss("ipo", beta=0.5, length_normalize=False)(inputs).loss
    torch.testing.assert_close(raw, (inputs.margin() - 1.0) ** 2)


def test_metrics_follow_trl_names_and_values():
    inputs = random_inputs(3)
    out = get_loss("dpo", beta=0.5)(inputs)
    chosen = 0.5 * (inputs.policy_chosen_logps - inputs.reference_chosen_logps)
    rejected = 0.5 * (inputs.policy_rejected_logps - inputs.reference_rejected_logps)
    torch.testing.assert_close(out.metrics["rewards/chosen"], chosen.mean())
    torch.testing.assert_close(out.metrics["rewards/margins"], (chosen - rejected).mean())
    assert float(out.metrics["rewards/accuracies"]) == pytest.approx(float((chosen > rejected).double().mean()))
    assert {"rewards/rejected", "logps/chosen", "logps/rejected"} <= set(out.metrics)


def test_composition_is_a_weighted_sum():
    inputs = random_inputs(4)
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
        get_loss("rdpo", eps=0.5)(random_inputs(0))
    assert parse_loss_expression("dpo + 0.2*sft") == [(1.0, "dpo"), (0.2, "sft")]


def test_reference_free_loss_needs_no_reference():
    inputs = random_inputs(2).replace(reference_chosen_logps=None, reference_rejected_logps=None)
    assert torch.isfinite(get_loss("simpo")(inputs).loss).all()
    with pytest.raises(ValueError, match="reference_chosen_logps"):
        get_loss("dpo")(inputs)
