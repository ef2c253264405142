"""Reference-free losses (CPO, AlphaPO, ORPO, ASFT, SimPO): values against NumPy, extremes, gradchecks."""

import numpy as np
import pytest
import torch

from dpokit.losses import LossInputs, get_loss

from .conftest import np_logsig

B = 6


def inputs(seed, dtype=torch.float64, avg_lo=-3.0, avg_hi=-0.05):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(1, 30, (B,), generator=g).to(dtype)
    ll = torch.randint(1, 30, (B,), generator=g).to(dtype)
    aw = avg_lo + (avg_hi - avg_lo) * torch.rand(B, generator=g, dtype=dtype)
    al = avg_lo + (avg_hi - avg_lo) * torch.rand(B, generator=g, dtype=dtype)
    return with_prompt(LossInputs(policy_chosen_logps=aw * lw, policy_rejected_logps=al * ll, chosen_lengths=lw,
                                  rejected_lengths=ll), seed)


def with_prompt(x, seed):
    """Add the prompt's log-probs (tokens after the first; own random stream, the rest unchanged)."""
    g = torch.Generator().manual_seed(seed + 4242)
    dtype = x.policy_chosen_logps.dtype
    n = torch.randint(0, 12, (x.batch_size,), generator=g).to(dtype)
    return x.replace(policy_prompt_logps=-(0.1 + 4 * torch.rand(x.batch_size, generator=g, dtype=dtype)) * n,
                     prompt_lengths=n)


def view(x):
    f = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    return f(x.policy_chosen_logps), f(x.policy_rejected_logps), f(x.chosen_lengths), f(x.rejected_lengths)


def nll(pw, lw, reduction):
    if reduction == "sum":
        return -pw
    if reduction == "example_mean":
        return -pw / lw
    # pooled over the batch's tokens: each example carries its own tokens' share, batch mean = CE
    return -pw * len(pw) / lw.sum()


def ref_cpo(x, beta=0.1, cpo_alpha=1.0, label_smoothing=0.0, nll_reduction="token_mean"):
    pw, pl, lw, ll = view(x)
    z = beta * (pw - pl)
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll(pw, lw, nll_reduction)


def ref_alphapo(x, beta=2.5, gamma=0.1, alpha=0.25, label_smoothing=0.0, cpo_alpha=0.0, nll_reduction="token_mean"):
    pw, pl, lw, ll = view(x)
    p_w, p_l = np.exp(pw / lw), np.exp(pl / ll)
    r_w = (1 - p_w ** (-alpha)) / alpha if alpha else np.log(p_w)
    r_l = (1 - p_l ** (-alpha)) / alpha if alpha else np.log(p_l)
    z = beta * (r_w - r_l) - gamma
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z) + cpo_alpha * nll(pw, lw, nll_reduction)


def _log_odds(avg):
    p = np.exp(avg)
    return np.log(p) - np.log(-np.expm1(avg))  # log(p/(1-p)), with 1-p computed accurately


def ref_orpo(x, beta=0.1, nll_reduction="token_mean", nll_scope="prompt_and_response"):
    pw, pl, lw, ll = view(x)
    nll_lp, nll_len = pw, lw
    if nll_scope == "prompt_and_response":  # the whole chosen sequence x + y_w (tokens after the first)
        nll_lp = pw + x.policy_prompt_logps.numpy()
        nll_len = lw + x.prompt_lengths.numpy()
    return nll(nll_lp, nll_len, nll_reduction) - beta * np_logsig(_log_odds(pw / lw) - _log_odds(pl / ll))


def ref_asft(x, lam=1.0, beta=1.0, nll_reduction="example_mean"):
    pw, pl, lw, ll = view(x)
    return nll(pw, lw, nll_reduction) - lam * (np_logsig(beta * _log_odds(pw / lw)) + np_logsig(-beta * _log_odds(pl / ll)))


def ref_simpo(x, beta=2.0, gamma=0.5, label_smoothing=0.0):
    pw, pl, lw, ll = view(x)
    z = beta * (pw / lw - pl / ll) - gamma
    return -(1 - label_smoothing) * np_logsig(z) - label_smoothing * np_logsig(-z)


CASES = [
    ("cpo", {}, ref_cpo),
    ("cpo", {"cpo_alpha": 0.5, "label_smoothing": 0.1, "nll_reduction": "sum"}, ref_cpo),
    ("cpo", {"nll_reduction": "example_mean"}, ref_cpo),
    ("alphapo", {}, ref_alphapo),
    ("alphapo", {"alpha": 0.6, "cpo_alpha": 0.2}, ref_alphapo),
    ("orpo", {"nll_scope": "response"}, ref_orpo),
    ("orpo", {"beta": 0.5, "nll_reduction": "example_mean", "nll_scope": "response"}, ref_orpo),
    ("orpo", {}, ref_orpo),
    ("orpo", {"beta": 0.5, "nll_reduction": "example_mean"}, ref_orpo),
    ("orpo", {"beta": 0.3, "nll_reduction": "sum"}, ref_orpo),
    ("asft", {}, ref_asft),
    ("asft", {"lam": 0.2, "beta": 0.5, "nll_reduction": "token_mean"}, ref_asft),
    ("simpo", {}, ref_simpo),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_random(name, hp, ref, seed):
    x = inputs(seed)
    np.testing.assert_allclose(get_loss(name, **hp)(x).loss.numpy(), ref(x, **hp), rtol=1e-9, atol=1e-12)


def extreme(name, hp):
    """Inputs where the preference logit is about +-50."""
    lw = torch.tensor([10.0, 10.0, 5.0, 5.0, 1.0, 1.0], dtype=torch.float64)
    ll = lw.clone()
    if name == "cpo":
        beta = hp.get("beta", 0.1)
        diff = torch.tensor([1, -1, 1, -1, 1, -1], dtype=torch.float64) * 50 / beta
        pl = torch.full((B,), -600.0, dtype=torch.float64)
        return with_prompt(LossInputs(policy_chosen_logps=pl + diff, policy_rejected_logps=pl, chosen_lengths=lw,
                                      rejected_lengths=ll), 0)
    # near-certain vs near-impossible responses: average log-probs -1e-5 and -45
    good, bad = torch.full((B,), -1e-5, dtype=torch.float64), torch.full((B,), -45.0, dtype=torch.float64)
    flip = torch.tensor([True, False, True, False, True, False])
    aw, al = torch.where(flip, good, bad), torch.where(flip, bad, good)
    return with_prompt(LossInputs(policy_chosen_logps=aw * lw, policy_rejected_logps=al * ll, chosen_lengths=lw,
                                  rejected_lengths=ll), 0)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=IDS)
def test_value_extreme(name, hp, ref):
    x = extreme(name, hp)
    got = get_loss(name, **hp)(x).loss
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), ref(x, **hp), rtol=1e-7, atol=1e-9)
    got32 = get_loss(name, **hp)(x.replace(**{k: getattr(x, k).float() for k in (
        "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths")})).loss
    assert torch.isfinite(got32).all()


def test_identities():
    x = inputs(5)
    close = torch.testing.assert_close
    # AlphaPO with alpha = 0 is SimPO
    close(get_loss("alphapo", alpha=0.0, beta=2.0, gamma=0.5)(x).loss, get_loss("simpo", beta=2.0, gamma=0.5)(x).loss)
    # CPO without its NLL term is DPO with a uniform reference
    zero = torch.zeros(B, dtype=torch.float64)
    close(get_loss("cpo", cpo_alpha=0.0)(x).loss,
          get_loss("dpo")(x.replace(reference_chosen_logps=zero, reference_rejected_logps=zero)).loss)
    # ASFT (beta=1, per-example NLL) = -(1+lam) avg_w - lam log(1 - exp(avg_l))
    pw, pl, lw, ll = view(x)
    lam = 0.7
    np.testing.assert_allclose(get_loss("asft", lam=lam)(x).loss.numpy(),
                               -(1 + lam) * pw / lw - lam * np.log(-np.expm1(pl / ll)), rtol=1e-9)
    # the pooled NLL's batch mean is the token-mean cross-entropy of the batch
    out = get_loss("orpo", beta=0.0, nll_scope="response")(x).loss
    np.testing.assert_allclose(out.mean().item(), -pw.sum() / lw.sum(), rtol=1e-12)


@pytest.mark.parametrize("name,hp", [("cpo", {}), ("alphapo", {"cpo_alpha": 0.3}), ("orpo", {"beta": 0.5, "nll_scope": "response"}),
                                     ("orpo", {"beta": 0.5}),
                                     ("asft", {"beta": 0.7}), ("cpo", {"nll_reduction": "example_mean"})])
def test_gradcheck(name, hp):
    x = inputs(9)
    pw = x.policy_chosen_logps.clone().requires_grad_()
    pl = x.policy_rejected_logps.clone().requires_grad_()
    loss = get_loss(name, **hp)
    assert torch.autograd.gradcheck(
        lambda a, b: loss(x.replace(policy_chosen_logps=a, policy_rejected_logps=b)).loss, (pw, pl))


# ---- ORPO's NLL scope through the engine, against TRL's ORPOTrainer code on full logits ----------
def _trl_orpo_loss(model, groups, pad_id, beta):
    """TRL ORPOTrainer's loss: its own ``get_batch_logps``/``odds_ratio_loss`` and, as in its
    ``concatenated_forward``, ``nn.CrossEntropyLoss`` over the chosen rows' prompt + response tokens."""
    from types import SimpleNamespace

    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    rows = [(p, c) for p, comps in groups for c in comps[:1]] + [(p, comps[1]) for p, comps in groups]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, :len(p) + len(c)] = 1
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
    logits = model(input_ids=ids, attention_mask=mask).logits.double()
    n = len(groups)
    nll_labels = torch.where(mask == 1, ids, -100)[:n, 1:]
    nll = torch.nn.CrossEntropyLoss()(logits[:n, :-1].reshape(-1, logits.shape[-1]), nll_labels.reshape(-1))
    avg = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=logits.device))
    losses = ORPOTrainer.odds_ratio_loss(fake, avg[:n], avg[n:])[0]
    return nll - losses.mean(), nll


@pytest.mark.parametrize("layout", ["padded", "packed", "prompt_shared"])
def test_orpo_matches_trl_on_a_tiny_model(tokenizer, layout):
    from dpokit.data.collate import Batch
    from dpokit.scoring.lm.engine import LogProbEngine
    from dpokit.tiny import tiny_llama

    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, tokenizer=tokenizer, seed=3).double()
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(5, len(tokenizer), (n,), generator=g).tolist()  # noqa: E731
    groups = [([tokenizer.bos_token_id or 1] + rand(int(n)), [rand(a), rand(b)])
              for n, a, b in [(4, 3, 5), (0, 6, 2), (7, 1, 4), (2, 5, 5)]]
    batch = Batch("pairs", groups, torch.arange(len(groups)))
    expected, expected_nll = _trl_orpo_loss(model, groups, tokenizer.pad_token_id, beta=0.1)
    loss = get_loss("orpo", beta=0.1)
    assert loss.needs.prompt_logps and not get_loss("orpo", nll_scope="response").needs.prompt_logps
    inputs = LogProbEngine(loss.needs, tokenizer.pad_token_id, layout=layout).loss_inputs(model, batch)
    out = loss(inputs)
    torch.testing.assert_close(out.loss.mean(), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.metrics["nll_loss"], expected_nll, rtol=1e-9, atol=1e-9)
    # the response-only scope gives another value: the prompt tokens really enter the default NLL
    response_only = get_loss("orpo", beta=0.1, nll_scope="response")(inputs).loss.mean().detach()
    assert abs(float(response_only) - float(expected.detach())) > 1e-6


def test_orpo_scope_errors_are_clear():
    with pytest.raises(ValueError, match="nll_scope must be one of"):
        get_loss("orpo", nll_scope="prompt")
    x = inputs(0).replace(policy_prompt_logps=None, prompt_lengths=None)
    with pytest.raises(ValueError, match="policy_prompt_logps"):
        get_loss("orpo")(x)
    torch.testing.assert_close(get_loss("orpo", nll_scope="response")(x).loss,
                               get_loss("orpo", nll_scope="response")(inputs(0)).loss)
