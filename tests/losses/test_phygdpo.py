"""PhyGDPO: values against a NumPy loop over groups at several inputs, float64 gradcheck, and the
identities: K = 2 is Diffusion-DPO (`dpo` on the pair, the official formula on the scorer's errors),
guidance off is the grouped Plackett-Luce loss, the full ranking with K = 2 is the same."""

import inspect
import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss, get_spec

B, K = 5, 4


def group_inputs(seed, b=B, k=K, dtype=torch.float64, ragged=False):
    g = torch.Generator().manual_seed(seed)
    mse_pi = 0.05 + 0.2 * torch.rand((b, k), generator=g, dtype=dtype)
    mse_ref = 0.05 + 0.2 * torch.rand((b, k), generator=g, dtype=dtype)
    scores = torch.rand((b, k), generator=g, dtype=dtype)
    mask = torch.ones((b, k), dtype=torch.bool)
    if ragged:
        mask[0, -1] = False
        mask[2, 2:] = False
    return LossInputs(list_policy_logps=(-mse_pi).masked_fill(~mask, 0), list_reference_logps=(-mse_ref).masked_fill(~mask, 0),
                      list_lengths=torch.ones((b, k), dtype=dtype), list_mask=mask, list_scores=scores), mse_pi, mse_ref


def np_phygdpo(mse_pi, mse_ref, scores, mask, beta, guidance, temperature, rank):
    """One group at a time, written from the formula in the docstring."""
    mse_pi, mse_ref, scores, mask = (np.asarray(a) for a in (mse_pi, mse_ref, scores, mask))
    out, mean_scores = [], []
    for b in range(mse_pi.shape[0]):
        idx = [i for i in range(mse_pi.shape[1]) if mask[b, i]]
        r = {i: -beta * (mse_pi[b, i] - mse_ref[b, i]) for i in idx}
        losers = idx[1:]
        mean_scores.append(np.mean([scores[b, j] for j in losers]))
        if rank == "full":
            order = [0] + sorted(losers, key=lambda j: -scores[b, j])
            total = 0.0
            for pos, i in enumerate(order):
                total -= r[i] - math.log(sum(math.exp(r[m]) for m in order[pos:]))
            out.append(total)
            continue
        g = {j: math.exp(-scores[b, j] / temperature) for j in losers}
        mean_g = sum(g.values()) / len(losers)
        w = {j: (g[j] / mean_g if guidance == "inside" else 1.0) for j in losers}
        denominator = math.exp(r[0]) + sum(w[j] * math.exp(r[j]) for j in losers)
        out.append(-(r[0] - math.log(denominator)))
    out = np.array(out)
    if guidance == "outside":
        z = np.exp(-np.array(mean_scores) / temperature)
        out = out * z / z.sum() * len(out)
    return out


CASES = [("inside", "winner_first", 1.0), ("inside", "winner_first", 0.3), ("outside", "winner_first", 0.5),
         ("none", "winner_first", 1.0), ("none", "full", 1.0), ("outside", "full", 2.0)]


@pytest.mark.parametrize("guidance,rank,temperature", CASES)
@pytest.mark.parametrize("seed,ragged", [(0, False), (1, True), (2, False)])
def test_value_against_numpy(guidance, rank, temperature, seed, ragged):
    x, mse_pi, mse_ref = group_inputs(seed, ragged=ragged)
    beta = 3.0
    got = get_loss("phygdpo", beta=beta, guidance=guidance, rank=rank, temperature=temperature)(x).loss
    want = np_phygdpo(mse_pi.numpy(), mse_ref.numpy(), x.list_scores.numpy(), x.list_mask.numpy(), beta, guidance,
                      temperature, rank)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("guidance,rank,temperature", CASES)
def test_gradcheck_float64(guidance, rank, temperature):
    x, _, _ = group_inputs(3, ragged=True)
    fn = get_loss("phygdpo", beta=2.0, guidance=guidance, rank=rank, temperature=temperature)

    def f(lp, lr):
        y = LossInputs(list_policy_logps=lp, list_reference_logps=lr, list_lengths=x.list_lengths,
                       list_mask=x.list_mask, list_scores=x.list_scores)
        return fn(y).loss

    lp = x.list_policy_logps.clone().requires_grad_(True)
    lr = x.list_reference_logps.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lp, lr))


@pytest.mark.parametrize("guidance,rank", [("inside", "winner_first"), ("none", "winner_first"),
                                           ("outside", "winner_first"), ("none", "full")])
def test_two_member_groups_are_diffusion_dpo(guidance, rank):
    x, mse_pi, mse_ref = group_inputs(4, k=2)
    x.list_scores = torch.full_like(x.list_scores, 0.4)  # outside: equal groups, omega = 1
    beta = 2500.0 * 1e-3
    got = get_loss("phygdpo", beta=beta, guidance=guidance, rank=rank)(x).loss
    pair = LossInputs(policy_chosen_logps=x.list_policy_logps[:, 0], policy_rejected_logps=x.list_policy_logps[:, 1],
                      reference_chosen_logps=x.list_reference_logps[:, 0],
                      reference_rejected_logps=x.list_reference_logps[:, 1],
                      chosen_lengths=torch.ones(B, dtype=torch.float64), rejected_lengths=torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(got, get_loss("dpo", beta=beta)(pair).loss)
    # the official Salesforce formula on the errors, beta_dpo = 2 beta
    m, r = mse_pi.numpy(), mse_ref.numpy()
    inside = -0.5 * (2 * beta) * ((m[:, 0] - m[:, 1]) - (r[:, 0] - r[:, 1]))
    np.testing.assert_allclose(got.numpy(), np.logaddexp(0, -inside), rtol=1e-10)


def test_guidance_moves_weight_to_less_physical_losers_and_none_is_plackett_luce():
    x, _, _ = group_inputs(5)
    loss = get_loss("phygdpo", beta=1.0, guidance="inside")
    lp = x.list_policy_logps.clone().requires_grad_(True)
    x.list_policy_logps = lp
    loss(x).loss.sum().backward()
    grad = lp.grad[:, 1:]  # d loss / d lp_j: a loser's push-down strength, larger for a lower physics score
    s = x.list_scores[:, 1:]
    hi, lo = s.argmax(-1), s.argmin(-1)
    rows = torch.arange(B)
    # with equal rewards the push is proportional to the weight; here rewards differ, so compare to the unweighted
    plain = group_inputs(5)[0]
    lp2 = plain.list_policy_logps.clone().requires_grad_(True)
    plain.list_policy_logps = lp2
    get_loss("phygdpo", beta=1.0, guidance="none")(plain).loss.sum().backward()
    ratio = grad / lp2.grad[:, 1:]
    assert bool((ratio[rows, lo] > ratio[rows, hi]).all())
    # guidance none with the winner first = the listwise plackett_luce with the winner scored highest
    pl_in = group_inputs(5)[0]
    pl_in.list_scores = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64).expand(B, K).clone()
    top1 = get_loss("phygdpo", beta=1.0, guidance="none")(pl_in).loss
    r = pl_in.list_policy_logps - pl_in.list_reference_logps
    torch.testing.assert_close(top1, -(r[:, 0] - torch.logsumexp(r, -1)))


def test_status_and_errors():
    spec = get_spec("phygdpo")
    assert spec.verified == "partial" and "[partial]" in inspect.getdoc(spec.impl)
    assert spec.needs.reference and spec.needs.data == "lists"
    x, _, _ = group_inputs(0)
    with pytest.raises(ValueError, match="guidance"):
        get_loss("phygdpo", guidance="outer")(x)
    with pytest.raises(ValueError, match="rank 'full'"):
        get_loss("phygdpo", rank="full", guidance="inside")(x)
    x.list_mask[1, 1:] = False
    with pytest.raises(ValueError, match="at least one loser"):
        get_loss("phygdpo")(x)
