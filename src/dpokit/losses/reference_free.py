"""Reference-free pairwise losses: SimPO, CPO, AlphaPO, ORPO, ASFT (only policy log-probs needed).

Notation (``docs/losses/notation.md``): ``lp(y)`` summed policy log-prob, ``avg(y) = lp(y)/|y|``
its token mean, ``p(y) = exp(avg(y))`` the geometric-mean token probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._numerics import capped_exp, log_odds, nll_term
from .base import LossInputs, LossOutput, reward_metrics
from .registry import Needs, register_loss

PAIRS_NO_REFERENCE = Needs(reference=False, data="pairs")


@register_loss(
    "simpo",
    family="reference_free",
    source="Meng et al. 2024, SimPO, arXiv 2405.14734, Eq. 6; official princeton-nlp/SimPO "
    "simpo_loss",
    needs=PAIRS_NO_REFERENCE,
)
def simpo_loss(
    inputs: LossInputs, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0
) -> LossOutput:
    """SimPO: ``L = -logsig(beta * (avg(y_w) - avg(y_l)) - gamma)``, avg = token-mean log-prob.

    ``gamma`` is the target reward margin (the official code writes it as
    ``gamma_beta_ratio = gamma / beta``; its default 0.25 with beta 2.0 gives gamma 0.5, which is
    also TRL CPOTrainer's ``simpo_gamma`` default). ``label_smoothing`` > 0 gives the official
    code's conservative variant ``-(1-ls) logsig(z) - ls logsig(-z)``.
    Source: Meng et al. 2024, arXiv 2405.14734.
    """
    avg_w = inputs.mean_logps("chosen")
    avg_l = inputs.mean_logps("rejected")
    z = beta * (avg_w - avg_l) - gamma
    loss = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    metrics = reward_metrics(beta * avg_w, beta * avg_l, inputs)
    return LossOutput(loss, metrics)


@register_loss(
    "cpo",
    family="reference_free",
    source="Xu et al. 2024, Contrastive Preference Optimization, arXiv 2401.08417; "
    "TRL CPOTrainer (loss_type='sigmoid', cpo_alpha)",
    needs=PAIRS_NO_REFERENCE,
)
def cpo_loss(
    inputs: LossInputs,
    beta: float = 0.1,
    cpo_alpha: float = 1.0,
    label_smoothing: float = 0.0,
    nll_reduction: str = "token_mean",
) -> LossOutput:
    """CPO: ``L = -logsig(beta (lp_w - lp_l)) + cpo_alpha * NLL(y_w)`` (summed log-probs, no reference).

    ``cpo_alpha`` weighs the behaviour-cloning NLL term (default 1.0, TRL and the paper).
    ``label_smoothing`` > 0 gives TRL's conservative form ``-(1-ls) logsig(z) - ls logsig(-z)``.
    ``nll_reduction``: ``"token_mean"`` (default) pools the cross-entropy over all chosen tokens of the
    batch, as TRL's ``nn.CrossEntropyLoss`` does (returned per example so the batch mean equals it);
    ``"example_mean"`` averages per example first; ``"sum"`` is the paper's sequence NLL.
    Defaults beta 0.1, cpo_alpha 1.0 (TRL; paper's MT setting). Same value as TRL CPOTrainer with
    ``loss_type="sigmoid"``. Source: Xu et al. 2024, arXiv 2401.08417.
    """
    inputs.require("policy_chosen_logps", "policy_rejected_logps")
    z = beta * (inputs.policy_chosen_logps - inputs.policy_rejected_logps)
    loss = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    metrics = reward_metrics(beta * inputs.policy_chosen_logps, beta * inputs.policy_rejected_logps, inputs)
    if cpo_alpha != 0:
        nll = nll_term(inputs, nll_reduction)
        loss = loss + cpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, metrics)


def alphapo_reward(avg_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO reward ``(1 - p^(-alpha))/alpha = (1 - exp(-alpha*avg))/alpha``; ``alpha=0`` gives ``avg``."""
    if alpha == 0:
        return avg_logp
    return (1.0 - capped_exp(-alpha * avg_logp)) / alpha


@register_loss(
    "alphapo",
    family="reference_free",
    source="Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment, arXiv 2501.03884; "
    "TRL CPOTrainer (loss_type='simpo' with alpha)",
    needs=PAIRS_NO_REFERENCE,
)
def alphapo_loss(
    inputs: LossInputs,
    beta: float = 2.5,
    gamma: float = 0.1,
    alpha: float = 0.25,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 0.0,
    nll_reduction: str = "token_mean",
) -> LossOutput:
    """AlphaPO: ``L = -logsig(beta (R(y_w) - R(y_l)) - gamma)``, ``R(y) = (1 - p(y)^(-alpha))/alpha``.

    ``p(y) = exp(avg(y))`` (token-mean log-prob), so ``alpha -> 0`` gives SimPO. The exponent
    ``-alpha*avg`` is clamped before ``exp``. Optional ``cpo_alpha`` NLL term (TRL sets it to 0 for
    AlphaPO) and ``label_smoothing`` as in ``cpo``. Defaults ``alpha`` 0.25, ``beta`` 2.5,
    ``gamma`` 0.1 (an example setting from the paper's sweeps). Same value as TRL CPOTrainer with
    ``loss_type="simpo"``, ``alpha``, ``simpo_gamma=gamma``. Source: Gupta et al. 2025, arXiv 2501.03884.
    """
    r_w = alphapo_reward(inputs.mean_logps("chosen"), alpha)
    r_l = alphapo_reward(inputs.mean_logps("rejected"), alpha)
    z = beta * (r_w - r_l) - gamma
    loss = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    metrics = reward_metrics(beta * r_w, beta * r_l, inputs)
    if cpo_alpha != 0:
        nll = nll_term(inputs, nll_reduction)
        loss = loss + cpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, metrics)


NLL_SCOPES = ("prompt_and_response", "response")


def _orpo_needs(nll_scope: str = "prompt_and_response", **_) -> Needs:
    if nll_scope not in NLL_SCOPES:
        raise ValueError(f"orpo: nll_scope must be one of {NLL_SCOPES}, got {nll_scope!r}")
    return Needs(reference=False, data="pairs", prompt_logps=nll_scope == "prompt_and_response")


@register_loss(
    "orpo",
    family="reference_free",
    source="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
    "arXiv 2403.07691; official xfactlab/orpo; TRL ORPOTrainer",
    needs=_orpo_needs,
)
def orpo_loss(
    inputs: LossInputs,
    beta: float = 0.1,
    nll_reduction: str = "token_mean",
    nll_scope: str = "prompt_and_response",
) -> LossOutput:
    """ORPO: ``L = NLL(x, y_w) - beta * logsig(log_odds(y_w) - log_odds(y_l))``.

    ``log_odds(y) = avg(y) - log(1 - exp(avg(y)))`` with a stable ``log1mexp`` (``avg`` clamped to
    ``<= -1e-7``); the odds use the response tokens only. ``beta`` is the paper's lambda (official
    ``--alpha``, TRL ``beta``), default 0.1.
    ``nll_scope``: which tokens the NLL term covers. ``"prompt_and_response"`` (default) is the whole
    chosen sequence, every token after the first (``lp(x) + lp(y_w)`` over ``|x| - 1 + |y_w|`` tokens),
    as the official code (``disable_prompt_loss`` off by default) and TRL's ORPOTrainer compute it;
    it needs the prompt's log-probs (``Needs.prompt_logps``). ``"response"`` is the NLL of ``y_w``
    alone, as in CPO (the official ``--disable_prompt_loss``).
    ``nll_reduction`` as in ``cpo``; the default ``"token_mean"`` pools over the batch's NLL tokens
    like the official code and TRL. Same value as TRL ORPOTrainer. Single stage from the base model.
    Source: Hong et al. 2024, arXiv 2403.07691.
    """
    _orpo_needs(nll_scope)
    avg_w, avg_l = inputs.mean_logps("chosen"), inputs.mean_logps("rejected")
    ratio = F.logsigmoid(log_odds(avg_w) - log_odds(avg_l))
    nll = nll_term(inputs, nll_reduction, include_prompt=nll_scope == "prompt_and_response")
    loss = nll - beta * ratio
    metrics = reward_metrics(beta * avg_w, beta * avg_l, inputs)
    metrics["log_odds_ratio"] = ratio.detach().mean()
    metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, metrics)


@register_loss(
    "asft",
    family="reference_free",
    source="Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood, "
    "arXiv 2409.10571, as restated in arXiv 2502.01237",
    needs=PAIRS_NO_REFERENCE,
    verified="partial",
)
def asft_loss(
    inputs: LossInputs, lam: float = 1.0, beta: float = 1.0, nll_reduction: str = "example_mean"
) -> LossOutput:
    """ASFT: ``L = NLL(y_w) - lam [logsig(beta lo(y_w)) + logsig(-beta lo(y_l))]``, ``lo`` = log-odds.

    ``lo(y) = log(p/(1-p))`` with ``p = exp(avg(y))`` as in ORPO. Pointwise, not pairwise: each
    response is pushed up or down on its own. With ``beta = 1`` (untempered, default) and the
    per-example NLL this equals ``-(1+lam) avg(y_w) - lam log(1 - exp(avg(y_l)))``; ``beta != 1`` is the
    tempered form of arXiv 2502.01237. ``lam`` 1.0 (best one-stage value in 2502.01237).
    Verification: PARTIAL: the formula comes from the restatement in
    arXiv 2502.01237; the original paper and code were not read.
    Source: Wang et al. 2024, arXiv 2409.10571.
    """
    lo_w = log_odds(inputs.mean_logps("chosen"))
    lo_l = log_odds(inputs.mean_logps("rejected"))
    nll = nll_term(inputs, nll_reduction)
    align = F.logsigmoid(beta * lo_w) + F.logsigmoid(-beta * lo_l)
    loss = nll - lam * align
    metrics = reward_metrics(beta * lo_w, beta * lo_l, inputs)
    metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, metrics)
