"""The online losses: XPO's exploration term, HyPO's RLOO KL surrogate, OFS-DPO's chasing and role swap."""

import torch
import torch.nn.functional as F

from dpokit.losses import LossInputs, get_loss
from dpokit.losses.online import rloo_kl_surrogate


def pair_inputs(seed=0, batch=4, **extras):
    g = torch.Generator().manual_seed(seed)
    t = lambda: (-10 * torch.rand(batch, generator=g, dtype=torch.float64))
    return LossInputs(policy_chosen_logps=t().requires_grad_(True), policy_rejected_logps=t().requires_grad_(True),
                      reference_chosen_logps=t(), reference_rejected_logps=t(),
                      chosen_lengths=torch.full((batch,), 3.0, dtype=torch.float64),
                      rejected_lengths=torch.full((batch,), 4.0, dtype=torch.float64), extras=dict(extras))


def test_xpo_adds_alpha_times_the_reference_sample_logprob_and_its_gradient():
    flag = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    beta, alpha = 0.3, 0.25
    inputs = pair_inputs(ref_is_chosen=flag)
    out = get_loss("xpo", beta=beta, alpha=alpha)(inputs)
    h = inputs.margin()
    expected = -F.logsigmoid(beta * h) + alpha * torch.where(flag.bool(), inputs.policy_chosen_logps,
                                                             inputs.policy_rejected_logps)
    torch.testing.assert_close(out.loss, expected)
    out.loss.sum().backward()
    dpo_grad = -beta * torch.sigmoid(-beta * h).detach()  # d(-logsig(beta h))/d lp_w
    torch.testing.assert_close(inputs.policy_chosen_logps.grad, dpo_grad + alpha * flag)
    torch.testing.assert_close(inputs.policy_rejected_logps.grad, -dpo_grad + alpha * (1 - flag))


def test_xpo_with_zero_alpha_is_dpo_and_ipo_variant():
    inputs = pair_inputs(seed=1, ref_is_chosen=torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(get_loss("xpo", alpha=0.0, beta=0.1)(inputs).loss, get_loss("dpo", beta=0.1)(inputs).loss)
    ipo = get_loss("xpo", alpha=0.0, beta=0.1, loss_type="ipo")(inputs).loss
    torch.testing.assert_close(ipo, (inputs.margin() - 5.0) ** 2)


def test_rloo_surrogate_gradient_is_the_leave_one_out_advantage():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    lr = torch.tensor([[-1.5, -1.0, -3.5], [-1.0, -1.0, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    surrogate, kl = rloo_kl_surrogate(lp, lr, mask)
    surrogate.sum().backward()
    r = (lp - lr).detach()
    a0 = [r[0, i] - (r[0].sum() - r[0, i]) / 2 for i in range(3)]
    a1 = [r[1, 0] - r[1, 1], r[1, 1] - r[1, 0], 0.0]
    torch.testing.assert_close(lp.grad[0], torch.stack(a0) / 3)
    torch.testing.assert_close(lp.grad[1], torch.tensor(a1, dtype=torch.float64) / 2)
    torch.testing.assert_close(kl, torch.stack([r[0].mean(), r[1, :2].mean()]))
    # one sample: no baseline, the advantage is r itself
    one = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    s, _ = rloo_kl_surrogate(one, torch.tensor([[-3.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    s.sum().backward()
    torch.testing.assert_close(one.grad, torch.tensor([[2.0]], dtype=torch.float64))


def test_hypo_is_dpo_plus_lam_times_kl_surrogate():
    g = torch.Generator().manual_seed(3)
    side_lp = (-5 * torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    side_lr = -5 * torch.rand(4, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 3, dtype=torch.float64)
    inputs = pair_inputs(seed=2, side_policy_logps=side_lp, side_reference_logps=side_lr, side_mask=mask)
    out = get_loss("hypo", beta=0.2, lam=0.5)(inputs)
    surrogate, kl = rloo_kl_surrogate(side_lp, side_lr, mask)
    torch.testing.assert_close(out.loss, -F.logsigmoid(0.2 * inputs.margin()) + 0.5 * surrogate)
    torch.testing.assert_close(out.metrics["hypo/kl"], kl.mean())
    out.loss.sum().backward()
    assert side_lp.grad is not None and torch.isfinite(side_lp.grad).all()


def test_ofs_dpo_gradients_roles_and_swap():
    g = torch.Generator().manual_seed(5)
    b_w = (-10 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_(True)
    b_l = (-10 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_(True)
    inputs = pair_inputs(seed=4, ofs_other_chosen_logps=b_w, ofs_other_rejected_logps=b_l)
    beta, alpha = 0.5, 0.3
    loss_fn = get_loss("ofs_dpo", beta=beta, alpha=alpha)
    out = loss_fn(inputs)
    a_w, a_l = inputs.policy_chosen_logps, inputs.policy_rejected_logps
    rw, rl = inputs.reference_chosen_logps, inputs.reference_rejected_logps
    dpo = lambda w, l: -F.logsigmoid(beta * ((w - rw) - (l - rl)))
    chase = lambda fw, fl, sw, sl: -F.logsigmoid(beta * ((fw - sw) - (fl - sl)))
    expected = dpo(a_w, a_l) + alpha * chase(a_w, a_l, b_w.detach(), b_l.detach()) + dpo(b_w, b_l) \
        - alpha * chase(a_w.detach(), a_l.detach(), b_w, b_l)
    torch.testing.assert_close(out.loss, expected)
    # the fast module (A) is pulled ahead of the slow one; the slow one chases it
    out.loss.sum().backward()
    grad_a = torch.autograd.grad((dpo(a_w, a_l) + alpha * chase(a_w, a_l, b_w.detach(), b_l.detach())).sum(), a_w)[0]
    torch.testing.assert_close(inputs.policy_chosen_logps.grad, grad_a)
    # role swap: only when the slow module's running DPO loss is lower
    instance = loss_fn._instance
    instance.running = [1.0, 2.0]
    assert not instance.maybe_swap() and instance.fast == 0
    instance.running = [2.0, 1.0]
    assert instance.maybe_swap() and instance.fast == 1
    state = instance.state_dict()
    fresh = get_loss("ofs_dpo")._instance
    fresh.load_state_dict(state)
    assert fresh.fast == 1 and fresh.running == [2.0, 1.0]
