"""Diffusion losses: values against independent NumPy formulas (written from the official code where it
exists) at several inputs, float64 gradcheck, and the identities with ``dpo``, ``hinge`` and the
listwise ``rankdpo``."""

import inspect
import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss, get_spec

from .references import check_gradcheck, check_value_random, np_logsig, np_view, ref_dpo, seq_inputs, standard_tests

B = 6


def test_status_marks():
    for name in ("diffusion_rankdpo", "dense_segment_dpo"):
        spec = get_spec(name)
        assert spec.verified == "partial" and "PARTIAL" in inspect.getdoc(spec.impl), name
    for name in ("diffusion_dro", "smpo", "inpo"):
        assert get_spec(name).verified == "verified", name
    for name in ("smpo", "inpo"):  # verified code, partial paper: the unverified part is marked
        assert "[partial]" in inspect.getdoc(get_spec(name).impl), name
    assert "scorer's business" in inspect.getdoc(get_spec("inpo").impl)


def surrogate_pairs(seed, batch=B, dtype=torch.float64):
    """Pair fields as the diffusion scorer writes them: lp = -mse (mean over D), lengths 1; plus the
    raw MSEs (policy/reference, winner/loser) for the formulas written as the official code does."""
    g = torch.Generator().manual_seed(seed)
    mse = {k: 0.05 + 0.2 * torch.rand(batch, generator=g, dtype=dtype) for k in ("tw", "tl", "rw", "rl")}
    ones = torch.ones(batch, dtype=dtype)
    x = LossInputs(policy_chosen_logps=-mse["tw"], policy_rejected_logps=-mse["tl"],
                   reference_chosen_logps=-mse["rw"], reference_rejected_logps=-mse["rl"],
                   chosen_lengths=ones, rejected_lengths=ones)
    return x, {k: v.numpy() for k, v in mse.items()}


def with_scores(x, seed, batch=B, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + seed)
    s = 0.11 + 0.17 * torch.rand(2, batch, generator=g, dtype=dtype)
    return x.replace(extras={"chosen_score": s[0], "rejected_score": s[1]})


# ---- Diffusion-DRO ------------------------------------------------------------------------------------
def ref_dro(d, margin=0.001):
    """Official loss block: L_e - L_p with L = mse_theta - mse_ref, then max(0, . + margin)."""
    s_e = -(d["pw"] - d["rw"])
    s_p = -(d["pl"] - d["rl"])
    return np.maximum(0.0, (s_e - s_p) + margin)


@pytest.mark.parametrize("margin", [0.001, 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dro_value(margin, seed):
    check_value_random("diffusion_dro", {"margin": margin}, ref_dro, seed)
    x, m = surrogate_pairs(seed)
    want = np.maximum(0.0, ((m["tw"] - m["rw"]) - (m["tl"] - m["rl"])) + margin)
    np.testing.assert_allclose(get_loss("diffusion_dro", margin=margin)(x).loss.numpy(), want, rtol=1e-12)


def test_dro_is_scaled_hinge_and_zero_past_the_margin():
    for seed in range(3):
        x = seq_inputs(seed)
        for m in (0.001, 0.3, 5.0):
            got = get_loss("diffusion_dro", margin=m)(x).loss
            hinge = get_loss("hinge", beta=1.0 / m)(x).loss
            torch.testing.assert_close(got, m * hinge, rtol=1e-12, atol=1e-15)
    x, _ = surrogate_pairs(0)
    pw = (x.reference_chosen_logps + 0.01).requires_grad_()  # expert well below the policy sample: h > margin
    out = get_loss("diffusion_dro")(x.replace(policy_chosen_logps=pw, policy_rejected_logps=x.reference_rejected_logps))
    assert (out.loss == 0).all()
    out.loss.sum().backward()
    assert (pw.grad == 0).all()


def test_dro_gradcheck_and_bad_margin():
    check_gradcheck("diffusion_dro", {"margin": 0.05})
    with pytest.raises(ValueError, match="margin"):
        get_loss("diffusion_dro", margin=0.0)(seq_inputs(0))


# ---- InPO -------------------------------------------------------------------------------------------------
def ref_inpo(d, beta=2500.0):
    return ref_dpo(d, beta)


test_inpo_value_random, test_inpo_value_extreme_margin, test_inpo_gradcheck = standard_tests(
    [("inpo", {"beta": 0.1}, ref_inpo), ("inpo", {"beta": 3.0}, ref_inpo)], [("inpo", {"beta": 0.5})])


@pytest.mark.parametrize("beta_dpo", [2000.0, 5000.0])
def test_inpo_official_formula_and_dpo(beta_dpo):
    for seed in range(3):
        x, m = surrogate_pairs(seed)
        model_diff, ref_diff = m["tw"] - m["tl"], m["rw"] - m["rl"]
        want = -np_logsig(-0.5 * beta_dpo * (model_diff - ref_diff))  # InPO train.py
        got = get_loss("inpo", beta=0.5 * beta_dpo)(x).loss
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
        torch.testing.assert_close(got, get_loss("dpo", beta=0.5 * beta_dpo)(x).loss, rtol=0, atol=0)


# ---- SmPO -------------------------------------------------------------------------------------------------
SMPO_MIN, SMPO_MAX = 0.11543526500463486, 0.28201571106910706


def ref_smpo(x, beta=2500.0, gamma=10.0, score_min=SMPO_MIN, score_max=SMPO_MAX):
    """SmPO train.py: p = exp(n_w)/(exp(n_w)+exp(n_l)), inside = beta (2p-1) gamma h, -logsigmoid(inside)."""
    d = np_view(x)
    sw = x.extras["chosen_score"].numpy()
    sl = x.extras["rejected_score"].numpy()
    nw, nl = (sw - score_min) / (score_max - score_min), (sl - score_min) / (score_max - score_min)
    p = np.exp(nw) / (np.exp(nw) + np.exp(nl))
    h = (d["pw"] - d["rw"]) - (d["pl"] - d["rl"])
    return -np_logsig(beta * (2 * p - 1) * gamma * h)


@pytest.mark.parametrize("hp", [{}, {"beta": 1000.0}, {"beta": 0.5, "gamma": 3.0}, {"score_min": 0.0, "score_max": 1.0}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smpo_value(hp, seed):
    for x in (with_scores(seq_inputs(seed), seed), with_scores(surrogate_pairs(seed)[0], seed)):
        got = get_loss("smpo", **hp)(x).loss.numpy()
        np.testing.assert_allclose(got, ref_smpo(x, **hp), rtol=1e-9, atol=1e-12)


def test_smpo_official_formula_literally():
    for seed in range(3):
        x, m = surrogate_pairs(seed)
        x = with_scores(x, seed)
        sw, sl = x.extras["chosen_score"].numpy(), x.extras["rejected_score"].numpy()
        nw = (sw - SMPO_MIN) / (SMPO_MAX - SMPO_MIN)
        nl = (sl - SMPO_MIN) / (SMPO_MAX - SMPO_MIN)
        p = np.exp(nw) / (np.exp(nw) + np.exp(nl))
        beta_dpo = 5000.0
        inside = -0.5 * beta_dpo * (2 * p - 1) * 10 * ((m["tw"] - m["tl"]) - (m["rw"] - m["rl"]))
        np.testing.assert_allclose(get_loss("smpo", beta=2500.0)(x).loss.numpy(), -np_logsig(inside), rtol=1e-10)


def test_smpo_identities():
    x = with_scores(seq_inputs(3), 3)
    # a fixed p: smpo(beta, gamma) == dpo(beta * gamma * (2p - 1)) example by example
    sw, sl = x.extras["chosen_score"], x.extras["rejected_score"]
    p = torch.sigmoid((sw - sl) / (SMPO_MAX - SMPO_MIN))
    got = get_loss("smpo", beta=0.2, gamma=10.0)(x).loss
    for i in range(B):
        one = x.replace(**{f: getattr(x, f)[i:i + 1] for f in ("policy_chosen_logps", "policy_rejected_logps",
                                                               "reference_chosen_logps", "reference_rejected_logps",
                                                               "chosen_lengths", "rejected_lengths")})
        dpo = get_loss("dpo", beta=float(0.2 * 10.0 * (2 * p[i] - 1)))(one).loss
        torch.testing.assert_close(got[i:i + 1], dpo, rtol=1e-12, atol=1e-14)
    # swapping chosen and rejected with their scores changes nothing: the scores decide
    swapped = x.replace(policy_chosen_logps=x.policy_rejected_logps, policy_rejected_logps=x.policy_chosen_logps,
                        reference_chosen_logps=x.reference_rejected_logps,
                        reference_rejected_logps=x.reference_chosen_logps,
                        extras={"chosen_score": sl, "rejected_score": sw})
    torch.testing.assert_close(get_loss("smpo", beta=0.2)(swapped).loss, got, rtol=1e-12, atol=1e-14)


def test_smpo_equal_scores_give_log2_and_no_gradient():
    x = seq_inputs(0)
    pw = x.policy_chosen_logps.clone().requires_grad_()
    s = torch.full((B,), 0.2, dtype=torch.float64)
    out = get_loss("smpo", beta=0.1)(x.replace(policy_chosen_logps=pw, extras={"chosen_score": s, "rejected_score": s}))
    torch.testing.assert_close(out.loss, torch.full((B,), math.log(2.0), dtype=torch.float64))
    out.loss.sum().backward()
    assert (pw.grad == 0).all()


def test_smpo_gradcheck_and_errors():
    x = with_scores(seq_inputs(11), 11)
    g = torch.Generator().manual_seed(5)
    pw = (x.reference_chosen_logps + 0.2 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_()
    pl = (x.reference_rejected_logps + 0.2 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_()
    loss = get_loss("smpo", beta=0.5, gamma=10.0)
    assert torch.autograd.gradcheck(lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss,
                                    (pw, pl), eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chosen_score"):
        get_loss("smpo")(seq_inputs(0))
    with pytest.raises(ValueError, match="score_max"):
        get_loss("smpo", score_min=1.0, score_max=1.0)(x)


# ---- RankDPO ----------------------------------------------------------------------------------------------
def rank_inputs(B=3, K=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lp = -(0.05 + 0.2 * torch.rand(B, K, generator=g, dtype=dtype))
    lr = -(0.05 + 0.2 * torch.rand(B, K, generator=g, dtype=dtype))
    phi = torch.randint(0, 4, (B, K), generator=g).to(dtype) / 3  # ties happen
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, -1] = False
    return LossInputs(list_policy_logps=lp.masked_fill(~mask, 0.0), list_reference_logps=lr.masked_fill(~mask, 0.0),
                      list_lengths=torch.ones(B, K, dtype=dtype), list_scores=phi, list_mask=mask)


def ref_rankdpo(x, beta=2500.0, discount="log2"):
    """Algorithm 2 with explicit loops: s_i = mse_theta - mse_ref; tau = rank by phi (ties: average)."""
    log = np.log2 if discount == "log2" else np.log
    out = []
    for b in range(x.list_mask.shape[0]):
        m = x.list_mask[b].numpy()
        s = -(x.list_policy_logps[b] - x.list_reference_logps[b]).numpy()[m]
        phi = x.list_scores[b].numpy()[m]
        n = len(s)
        tau = [1 + sum(phi[j] > phi[i] for j in range(n)) + 0.5 * (sum(phi[j] == phi[i] for j in range(n)) - 1)
               for i in range(n)]
        total = 0.0
        for i in range(n):
            for j in range(n):
                if phi[i] > phi[j]:
                    delta = abs(2 ** phi[i] - 2 ** phi[j]) * abs(1 / log(1 + tau[i]) - 1 / log(1 + tau[j]))
                    total += -delta * np_logsig(-beta * (s[i] - s[j]))
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("hp", [{}, {"beta": 10.0}, {"beta": 100.0, "discount": "ln"}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rankdpo_value(hp, seed):
    x = rank_inputs(seed=seed)
    np.testing.assert_allclose(get_loss("diffusion_rankdpo", **hp)(x).loss.numpy(), ref_rankdpo(x, **hp),
                               rtol=1e-9, atol=1e-12)


def test_rankdpo_identities():
    for seed in range(3):
        x = rank_inputs(seed=seed)
        got = get_loss("diffusion_rankdpo", beta=50.0)(x).loss
        torch.testing.assert_close(got, get_loss("rankdpo", beta=50.0)(x).loss, rtol=1e-12, atol=1e-14)
        ln = get_loss("diffusion_rankdpo", beta=50.0, discount="ln")(x).loss
        torch.testing.assert_close(ln, got / math.log(2.0), rtol=1e-12, atol=1e-14)
    # K = 2: DPO weighted by |2^phi1 - 2^phi2| * |1/log2(2) - 1/log2(3)|
    x, _ = surrogate_pairs(4)
    phi = torch.tensor([[0.8, 0.2]] * B, dtype=torch.float64)
    lists = LossInputs(list_policy_logps=torch.stack([x.policy_chosen_logps, x.policy_rejected_logps], 1),
                       list_reference_logps=torch.stack([x.reference_chosen_logps, x.reference_rejected_logps], 1),
                       list_lengths=torch.ones(B, 2, dtype=torch.float64), list_scores=phi,
                       list_mask=torch.ones(B, 2, dtype=torch.bool))
    delta = abs(2 ** 0.8 - 2 ** 0.2) * abs(1 / math.log2(2) - 1 / math.log2(3))
    torch.testing.assert_close(get_loss("diffusion_rankdpo", beta=40.0)(lists).loss,
                               delta * get_loss("dpo", beta=40.0)(x).loss, rtol=1e-12, atol=1e-14)


def test_rankdpo_padding_and_gradcheck():
    x = rank_inputs(seed=1)
    junk = x.replace(list_policy_logps=x.list_policy_logps.masked_fill(~x.list_mask, 7.0),
                     list_scores=x.list_scores.masked_fill(~x.list_mask, 9.0))
    torch.testing.assert_close(get_loss("diffusion_rankdpo")(junk).loss, get_loss("diffusion_rankdpo")(x).loss)
    lp = x.list_policy_logps.clone().requires_grad_()
    loss = get_loss("diffusion_rankdpo", beta=20.0)
    assert torch.autograd.gradcheck(lambda a: loss(x.replace(list_policy_logps=a)).loss, (lp,), eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="discount"):
        get_loss("diffusion_rankdpo", discount="log10")(x)


# ---- DenseDPO (per segment) ---------------------------------------------------------------------------------
def segment_inputs(seed, batch=4, F=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lp = -(0.05 + 0.2 * torch.rand(batch, 2, F, generator=g, dtype=dtype))
    lr = -(0.05 + 0.2 * torch.rand(batch, 2, F, generator=g, dtype=dtype))
    y = torch.randint(-1, 2, (batch, F), generator=g).to(dtype)
    y[-1] = 0.0  # an example with no labelled segment
    return LossInputs(extras={"segment_policy_logps": lp, "segment_reference_logps": lr, "segment_labels": y})


def ref_dense(x, beta=2500.0, reduction="mean"):
    lp, lr, y = (x.extras[k].numpy() for k in ("segment_policy_logps", "segment_reference_logps", "segment_labels"))
    out = []
    for b in range(y.shape[0]):
        terms = []
        for f in range(y.shape[1]):
            if y[b, f] == 0:
                continue
            s_a = -(lp[b, 0, f] - lr[b, 0, f])
            s_b = -(lp[b, 1, f] - lr[b, 1, f])
            terms.append(-np_logsig(-beta * y[b, f] * (s_a - s_b)))
        out.append(0.0 if not terms else (np.mean(terms) if reduction == "mean" else np.sum(terms)))
    return np.array(out)


@pytest.mark.parametrize("hp", [{}, {"beta": 20.0}, {"beta": 20.0, "reduction": "sum"}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_value(hp, seed):
    x = segment_inputs(seed)
    np.testing.assert_allclose(get_loss("dense_segment_dpo", **hp)(x).loss.numpy(), ref_dense(x, **hp),
                               rtol=1e-9, atol=1e-12)


def test_dense_identities():
    x, _ = surrogate_pairs(2)
    one = LossInputs(extras={
        "segment_policy_logps": torch.stack([x.policy_chosen_logps, x.policy_rejected_logps], 1).unsqueeze(-1),
        "segment_reference_logps": torch.stack([x.reference_chosen_logps, x.reference_rejected_logps], 1).unsqueeze(-1),
        "segment_labels": torch.ones(B, 1, dtype=torch.float64)})
    dpo = get_loss("dpo", beta=30.0)(x).loss
    torch.testing.assert_close(get_loss("dense_segment_dpo", beta=30.0)(one).loss, dpo, rtol=1e-12, atol=1e-14)
    # label -1 equals swapping a and b
    flipped = one.replace(extras={**one.extras, "segment_labels": -one.extras["segment_labels"],
                                  "segment_policy_logps": one.extras["segment_policy_logps"].flip(1),
                                  "segment_reference_logps": one.extras["segment_reference_logps"].flip(1)})
    torch.testing.assert_close(get_loss("dense_segment_dpo", beta=30.0)(flipped).loss, dpo, rtol=1e-12, atol=1e-14)
    # all segments labelled alike with equal segment margins: the clip-level dpo
    same = LossInputs(extras={k: v.expand(-1, -1, 3) if v.dim() == 3 else v.expand(-1, 3)
                              for k, v in one.extras.items()})
    torch.testing.assert_close(get_loss("dense_segment_dpo", beta=30.0)(same).loss, dpo, rtol=1e-12, atol=1e-14)


def test_dense_unlabelled_is_zero_gradcheck_and_errors():
    x = segment_inputs(0)
    lp = x.extras["segment_policy_logps"].clone().requires_grad_()
    loss = get_loss("dense_segment_dpo", beta=10.0)
    out = loss(x.replace(extras={**x.extras, "segment_policy_logps": lp}))
    assert out.loss[-1] == 0
    out.loss.sum().backward()
    assert (lp.grad[-1] == 0).all()
    assert torch.autograd.gradcheck(
        lambda a: loss(x.replace(extras={**x.extras, "segment_policy_logps": a})).loss, (lp.detach().requires_grad_(),),
        eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="segment_labels must be"):
        loss(x.replace(extras={**x.extras, "segment_labels": 0.5 * torch.ones_like(x.extras["segment_labels"])}))
    with pytest.raises(ValueError, match=r"\[B, 2, F\]"):
        loss(x.replace(extras={**x.extras, "segment_policy_logps": lp.detach()[:, :1]}))
    with pytest.raises(ValueError, match="segment_reference_logps"):
        loss(LossInputs(extras={"segment_policy_logps": lp.detach(), "segment_labels": x.extras["segment_labels"]}))
