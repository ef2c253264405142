"""Listwise losses: each against an independent NumPy formula, gradcheck in float64, the K = 2
reductions to pairwise losses, invariance to response order, and padding that changes nothing."""

import math

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss

from .references import np_logsig as logsig

LISTWISE = ["plackett_luce", "lipo_lambda", "rankdpo", "irpo", "adpo", "infonca", "nca_list", "exo_list",
            "tpo_list"]


# ---- inputs -------------------------------------------------------------------------------------
def list_inputs(B=3, K=4, seed=0, ties=True, pad_last=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lp = -6 * torch.rand(B, K, generator=g, dtype=dtype)
    lr = -6 * torch.rand(B, K, generator=g, dtype=dtype)
    if ties:  # graded scores with ties: {0, 0.5, 1}
        scores = torch.randint(0, 3, (B, K), generator=g).to(dtype) / 2
    else:
        scores = torch.rand(B, K, generator=g, dtype=dtype)
    mask = torch.ones(B, K, dtype=torch.bool)
    if pad_last:
        mask[0, -1] = False  # list 0 has K-1 responses
    lengths = torch.randint(1, 9, (B, K), generator=g).to(dtype)
    return LossInputs(list_policy_logps=lp, list_reference_logps=lr, list_lengths=lengths, list_scores=scores,
                      list_mask=mask)


def np_lists(inputs):
    """Per list: (r, t, lengths) of the real responses, as NumPy arrays."""
    out = []
    for b in range(inputs.list_mask.shape[0]):
        m = inputs.list_mask[b].numpy()
        r = (inputs.list_policy_logps[b] - inputs.list_reference_logps[b]).detach().numpy()[m]
        out.append((r, inputs.list_scores[b].numpy()[m], inputs.list_lengths[b].numpy()[m]))
    return out


def lse(x):
    x = np.asarray(x, dtype=np.float64)
    return x.max() + np.log(np.exp(x - x.max()).sum())


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def avg_ranks(t):
    return np.array([1 + (t > ti).sum() + 0.5 * ((t == ti).sum() - 1) for ti in t], dtype=np.float64)


def model_ranks(s):
    ranks = np.empty(len(s))
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
    return ranks


def lambda_pairs(s, t, ranks):
    g = 2.0 ** t - 1
    inv_d = 1.0 / np.log2(1 + ranks)
    return sum(abs(g[i] - g[j]) * abs(inv_d[i] - inv_d[j]) * -logsig(s[i] - s[j])
               for i in range(len(s)) for j in range(len(s)) if t[i] > t[j])


# ---- independent references (one list at a time) ------------------------------------------------
def ref_plackett_luce(r, t, n_len, beta=0.1, ties="separate"):
    s = beta * r
    total = 0.0
    for k in range(len(s)):
        if ties == "separate":
            d = [k] + [j for j in range(len(s)) if t[j] < t[k]]
        elif ties == "breslow":
            d = [j for j in range(len(s)) if t[j] <= t[k]]
        else:
            d = [k] + [j for j in range(len(s)) if t[j] < t[k] or (t[j] == t[k] and j > k)]
        total += s[k] - lse(s[d])
    return -total


def ref_lipo(r, t, n_len, beta=0.05):
    s = beta * r
    return lambda_pairs(s, t, model_ranks(s))


def ref_rankdpo(r, t, n_len, beta=0.1, rank_source="true"):
    s = beta * r
    return lambda_pairs(s, t, avg_ranks(t) if rank_source == "true" else model_ranks(s))


def ref_irpo(r, t, n_len, beta=1.0, weighting="ndcg", length_normalize=False):
    if length_normalize:
        r = r / n_len
    n = len(r)
    ranks = avg_ranks(t)
    w = {"ndcg": (2 ** t - 1) / np.log2(1 + ranks), "rank": 1 / np.log2(1 + ranks),
         "gain_over_rank": (2 ** t - 1) / ranks}[weighting]
    total = 0.0
    for i in range(n):
        lse_i = lse([beta * (r[j] - r[i]) for j in range(n) if j != i]) - math.log(n - 1)
        total += w[i] * logsig(-lse_i)
    return -total / n


def ref_adpo(r, t, n_len, tau=0.8, beta_reward=0.5):
    q = softmax((t - t.mean()) / (t.std(ddof=1) + 1e-8) / beta_reward)
    return -(q * np.log(softmax(r / tau))).sum()


def ref_infonca(r, t, n_len, beta=0.01, alpha=1.0):
    return -(softmax(t / alpha) * np.log(softmax(beta * r))).sum()


def ref_nca_list(r, t, n_len, beta=0.01, alpha=1.0):
    s = beta * r
    return -logsig(-s).mean() - (softmax(t / alpha) * logsig(s)).sum()


def ref_exo_list(r, t, n_len, beta=0.1, beta_r=1.0):
    pf, pr = softmax(beta * r), softmax(t / beta_r)
    return (pf * (np.log(pf) - np.log(pr))).sum()


def ref_tpo_list(r, t, n_len, beta=0.5, length_normalize=True):
    u = r / n_len if length_normalize else r
    n = len(u)
    total = sum(-logsig(beta * (u[i] - u[j]) * np.sign(t[i] - t[j]))
                for i in range(n) for j in range(n) if i != j and t[i] != t[j])
    return total / (n * (n - 1))


REFERENCES = {
    "plackett_luce": ref_plackett_luce, "lipo_lambda": ref_lipo, "rankdpo": ref_rankdpo, "irpo": ref_irpo,
    "adpo": ref_adpo, "infonca": ref_infonca, "nca_list": ref_nca_list, "exo_list": ref_exo_list,
    "tpo_list": ref_tpo_list,
}
VARIANTS = [
    ("plackett_luce", {}), ("plackett_luce", {"ties": "breslow"}), ("plackett_luce", {"ties": "order"}),
    ("plackett_luce", {"beta": 0.7}),
    ("lipo_lambda", {}), ("lipo_lambda", {"beta": 0.5}),
    ("rankdpo", {}), ("rankdpo", {"rank_source": "model", "beta": 0.3}),
    ("irpo", {}), ("irpo", {"weighting": "rank", "beta": 0.5}), ("irpo", {"weighting": "gain_over_rank"}),
    ("irpo", {"length_normalize": True}),
    ("adpo", {}), ("adpo", {"tau": 1.3, "beta_reward": 1.0}),
    ("infonca", {}), ("infonca", {"beta": 0.5, "alpha": 0.3}),
    ("nca_list", {}), ("nca_list", {"beta": 0.5, "alpha": 0.3}),
    ("exo_list", {}), ("exo_list", {"beta": 0.4, "beta_r": 0.5}),
    ("tpo_list", {}), ("tpo_list", {"length_normalize": False, "beta": 0.2}),
]


@pytest.mark.parametrize("name, hparams", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_independent_formula(name, hparams, seed):
    inputs = list_inputs(seed=seed, ties=seed == 0)
    out = get_loss(name, **hparams)(inputs)
    assert out.loss.shape == (3,)
    expected = [REFERENCES[name](r, t, n, **hparams) for r, t, n in np_lists(inputs)]
    np.testing.assert_allclose(out.loss.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert out.metrics[key].dim() == 0 and torch.isfinite(out.metrics[key])


@pytest.mark.parametrize("name, hparams", VARIANTS)
def test_gradcheck(name, hparams):
    inputs = list_inputs(seed=3, ties=True)

    def f(lp):
        return get_loss(name, **hparams)(inputs.replace(list_policy_logps=lp)).loss

    lp = inputs.list_policy_logps.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-6)
    grad, = torch.autograd.grad(f(lp).sum(), lp)
    assert torch.all(grad[~inputs.list_mask] == 0), "padding must get no gradient"


@pytest.mark.parametrize("name, hparams", [v for v in VARIANTS if v[1].get("ties") != "order"])
def test_invariant_to_response_order(name, hparams):
    inputs = list_inputs(B=2, K=5, seed=5, ties=True, pad_last=False)
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted = inputs.replace(**{f: getattr(inputs, f)[:, perm] for f in
                                 ("list_policy_logps", "list_reference_logps", "list_lengths", "list_scores",
                                  "list_mask")})
    loss_fn = get_loss(name, **hparams)
    torch.testing.assert_close(loss_fn(inputs).loss, loss_fn(permuted).loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, hparams", VARIANTS)
def test_padding_changes_nothing(name, hparams):
    inputs = list_inputs(B=3, K=3, seed=7, pad_last=False)
    g = torch.Generator().manual_seed(11)

    def pad(x, fill):
        extra = fill(g) if callable(fill) else torch.full((3, 2), fill, dtype=x.dtype)
        return torch.cat([x, extra.to(x.dtype)], dim=1)

    garbage = lambda g: 50 * torch.randn(3, 2, generator=g, dtype=torch.float64)  # noqa: E731
    padded = LossInputs(
        list_policy_logps=pad(inputs.list_policy_logps, garbage),
        list_reference_logps=pad(inputs.list_reference_logps, garbage),
        list_lengths=pad(inputs.list_lengths, 0.0),
        list_scores=pad(inputs.list_scores, garbage),
        list_mask=pad(inputs.list_mask, False).bool(),
    )
    loss_fn = get_loss(name, **hparams)
    torch.testing.assert_close(loss_fn(inputs).loss, loss_fn(padded).loss, rtol=1e-12, atol=1e-12)
    for key, value in loss_fn(inputs).metrics.items():
        torch.testing.assert_close(value, loss_fn(padded).metrics[key], msg=key)


# ---- K = 2 reductions -----------------------------------------------------------------------------
def pair_and_list(seed=0, B=5, scores=(1.0, 0.0)):
    g = torch.Generator().manual_seed(seed)
    lp = -8 * torch.rand(B, 2, generator=g, dtype=torch.float64)
    lr = -8 * torch.rand(B, 2, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 9, (B, 2), generator=g).to(torch.float64)
    pair = LossInputs(policy_chosen_logps=lp[:, 0], policy_rejected_logps=lp[:, 1],
                      reference_chosen_logps=lr[:, 0], reference_rejected_logps=lr[:, 1],
                      chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])
    lists = LossInputs(list_policy_logps=lp, list_reference_logps=lr, list_lengths=lengths,
                       list_scores=torch.tensor([scores] * B, dtype=torch.float64),
                       list_mask=torch.ones(B, 2, dtype=torch.bool))
    return pair, lists


@pytest.mark.parametrize("ties", ["separate", "breslow", "order"])
@pytest.mark.parametrize("beta", [0.1, 1.3])
def test_plackett_luce_k2_is_dpo(ties, beta):
    pair, lists = pair_and_list()
    torch.testing.assert_close(get_loss("plackett_luce", beta=beta, ties=ties)(lists).loss,
                               get_loss("dpo", beta=beta)(pair).loss, rtol=1e-12, atol=1e-12)


def test_plackett_luce_with_ranks_and_any_score_scale_is_dpo():
    pair, lists = pair_and_list(scores=(-1.0, -2.0))  # ranks (1, 2) read as scores -rank
    torch.testing.assert_close(get_loss("pl_dpo")(lists).loss, get_loss("dpo")(pair).loss)


def test_plackett_luce_ties():
    pair, lists = pair_and_list(scores=(1.0, 1.0))
    assert torch.all(get_loss("plackett_luce")(lists).loss == 0)  # a tied pair is no preference
    h = 0.1 * pair.margin()
    expected = -torch.nn.functional.logsigmoid(h) - torch.nn.functional.logsigmoid(-h)
    torch.testing.assert_close(get_loss("plackett_luce", ties="breslow")(lists).loss, expected)


@pytest.mark.parametrize("name", ["lipo_lambda", "rankdpo"])
def test_lambda_losses_k2_are_scaled_dpo(name):
    pair, lists = pair_and_list()
    beta = 0.2
    scale = (2 ** 1.0 - 1) * (1 - 1 / math.log2(3))
    torch.testing.assert_close(get_loss(name, beta=beta)(lists).loss, scale * get_loss("dpo", beta=beta)(pair).loss)


def test_rankdpo_model_ranks_is_lipo():
    inputs = list_inputs(seed=4, ties=True)
    torch.testing.assert_close(get_loss("rankdpo", beta=0.3, rank_source="model")(inputs).loss,
                               get_loss("lipo_lambda", beta=0.3)(inputs).loss)


def test_irpo_k2_is_half_dpo():
    pair, lists = pair_and_list()
    torch.testing.assert_close(get_loss("irpo", beta=0.5)(lists).loss, 0.5 * get_loss("dpo", beta=0.5)(pair).loss)


def test_irpo_refuses_negative_relevance():
    pair, lists = pair_and_list(scores=(-1.0, -2.0))
    with pytest.raises(ValueError, match="relevance"):
        get_loss("irpo")(lists)


def test_adpo_k2_is_cdpo():
    pair, lists = pair_and_list()
    tau, beta_reward = 0.8, 0.5
    z = 0.5 / (math.sqrt(0.5) + 1e-8)  # scores (1, 0): mean 0.5, unbiased std sqrt(0.5)
    q2 = 1 / (1 + math.exp(2 * z / beta_reward))
    torch.testing.assert_close(get_loss("adpo", tau=tau, beta_reward=beta_reward)(lists).loss,
                               get_loss("cdpo", beta=1 / tau, eps=q2)(pair).loss, rtol=1e-10, atol=1e-12)


def test_infonca_k2_hard_target_is_dpo():
    pair, lists = pair_and_list()
    torch.testing.assert_close(get_loss("infonca", beta=0.3, alpha=1e-3)(lists).loss,
                               get_loss("dpo", beta=0.3)(pair).loss)


def test_nca_list_k2_hard_target_is_pairwise_nca():
    pair, lists = pair_and_list()
    torch.testing.assert_close(get_loss("nca_list", beta=0.3, alpha=1e-3)(lists).loss,
                               get_loss("nca", beta=0.3)(pair).loss)


@pytest.mark.parametrize("eps", [1e-3, 0.2])
def test_exo_list_k2_is_pairwise_exo(eps):
    beta_r = 0.7
    pair, lists = pair_and_list(scores=(beta_r * math.log((1 - eps) / eps), 0.0))
    torch.testing.assert_close(get_loss("exo_list", beta=0.3, beta_r=beta_r)(lists).loss,
                               get_loss("exo", beta=0.3, eps=eps)(pair).loss)


def test_tpo_list_k2_is_sigmoid_norm():
    pair, lists = pair_and_list()
    torch.testing.assert_close(get_loss("tpo_list", beta=0.4)(lists).loss,
                               get_loss("sigmoid_norm", beta=0.4)(pair).loss)


def test_all_tied_lists():
    inputs = list_inputs(seed=2)
    inputs.list_scores = torch.ones_like(inputs.list_scores)
    for name in ("plackett_luce", "lipo_lambda", "rankdpo", "tpo_list"):
        assert torch.all(get_loss(name)(inputs).loss == 0), name
    for name in ("adpo", "infonca", "exo_list"):  # uniform target: minimal when the rewards are equal
        equal = inputs.replace(list_policy_logps=inputs.list_reference_logps.clone())
        assert torch.all(get_loss(name)(equal).loss <= get_loss(name)(inputs).loss + 1e-12), name


def test_losses_learn_the_ranking():
    """A few gradient steps on free log-probs order the rewards as the scores."""
    for name in LISTWISE:
        inputs = list_inputs(B=2, K=4, seed=9, ties=False, pad_last=False)
        lp = inputs.list_reference_logps.clone().requires_grad_(True)
        opt = torch.optim.SGD([lp], lr=1.0 if name not in ("infonca", "nca_list") else 50.0)
        loss_fn = get_loss(name)
        for _ in range(200):
            opt.zero_grad()
            loss_fn(inputs.replace(list_policy_logps=lp)).loss.sum().backward()
            opt.step()
        out = loss_fn(inputs.replace(list_policy_logps=lp.detach()))
        assert out.metrics["rewards/accuracies"] > 0.8, name


@pytest.mark.parametrize("name", LISTWISE)
def test_low_precision_log_probs_keep_score_precision(name):
    inputs = list_inputs(seed=1, dtype=torch.float32)
    inputs.list_scores = torch.tensor([[0.501, 0.502, 0.0, 0.0]] * 3)  # equal in bfloat16, not in float32
    low = inputs.replace(list_policy_logps=inputs.list_policy_logps.bfloat16(),
                         list_reference_logps=inputs.list_reference_logps.bfloat16())
    out = get_loss(name)(low)
    assert torch.isfinite(out.loss.float()).all()
    assert out.metrics["rewards/accuracies"] >= 0
    if name == "plackett_luce":  # the 0.502 > 0.501 order survives: response 1 must beat response 0
        assert not torch.equal(out.loss.float(), get_loss(name)(low.replace(
            list_scores=torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3))).loss.float())
