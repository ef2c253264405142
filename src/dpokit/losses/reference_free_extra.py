"""More reference-free pairwise losses: CPO, AlphaPO, ORPO, ASFT (only policy log-probs needed).

Notation: ``lp(y)`` summed policy log-prob, ``avg(y) = lp(y)/|y|`` its token mean,
``p(y) = exp(avg(y))`` the geometric-mean token probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._numerics import capped_exp, log_odds, nll_term
from .base import LossInputs, LossOutput, reward_metrics
from .registry import Needs, register_loss

PAIRS_NO_REFERENCE = Needs(reference=False, data="pairs")


def _policy_logps_metrics(inputs: LossInputs, metrics):
    metrics["logps/chosen"] = inputs.policy_chosen_logps.detach().mean()
    metrics["logps/rejected"] = inputs.policy_rejected_logps.detach().mean()
    return metrics


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
    metrics = reward_metrics(beta * inputs.policy_chosen_logps, beta * inputs.policy_rejected_logps)
    if cpo_alpha != 0:
        nll = nll_term(inputs, nll_reduction)
        loss = loss + cpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, _policy_logps_metrics(inputs, metrics))


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
    ``gamma`` 0.1 (an example setting in METHODS.md B2). Same value as TRL CPOTrainer with
    ``loss_type="simpo"``, ``alpha``, ``simpo_gamma=gamma``. Source: Gupta et al. 2025, arXiv 2501.03884.
    """
    r_w = alphapo_reward(inputs.mean_logps("chosen"), alpha)
    r_l = alphapo_reward(inputs.mean_logps("rejected"), alpha)
    z = beta * (r_w - r_l) - gamma
    loss = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    metrics = reward_metrics(beta * r_w, beta * r_l)
    if cpo_alpha != 0:
        nll = nll_term(inputs, nll_reduction)
        loss = loss + cpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, _policy_logps_metrics(inputs, metrics))


@register_loss(
    "orpo",
    family="reference_free",
    source="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
    "arXiv 2403.07691; official xfactlab/orpo; TRL ORPOTrainer",
    needs=PAIRS_NO_REFERENCE,
)
def orpo_loss(inputs: LossInputs, beta: float = 0.1, nll_reduction: str = "token_mean") -> LossOutput:
    """ORPO: ``L = NLL(y_w) - beta * logsig(log_odds(y_w) - log_odds(y_l))``.

    ``log_odds(y) = avg(y) - log(1 - exp(avg(y)))`` with a stable ``log1mexp`` (``avg`` clamped to
    ``<= -1e-7``). ``beta`` is the paper's lambda (official ``--alpha``, TRL ``beta``), default 0.1.
    ``nll_reduction`` as in ``cpo``; the default ``"token_mean"`` pools over the batch's chosen tokens
    like the official code and TRL. Same value as TRL ORPOTrainer. Single stage from the base model.
    Source: Hong et al. 2024, arXiv 2403.07691.
    """
    avg_w, avg_l = inputs.mean_logps("chosen"), inputs.mean_logps("rejected")
    ratio = F.logsigmoid(log_odds(avg_w) - log_odds(avg_l))
    nll = nll_term(inputs, nll_reduction)
    loss = nll - beta * ratio
    metrics = reward_metrics(beta * avg_w, beta * avg_l)
    metrics["log_odds_ratio"] = ratio.detach().mean()
    metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, _policy_logps_metrics(inputs, metrics))


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
    Verification: PARTIAL (METHODS.md B4/addendum 10): the formula comes from the restatement in
    arXiv 2502.01237; the original paper and code were not read.
    Source: Wang et al. 2024, arXiv 2409.10571.
    """
    lo_w = log_odds(inputs.mean_logps("chosen"))
    lo_l = log_odds(inputs.mean_logps("rejected"))
    nll = nll_term(inputs, nll_reduction)
    align = F.logsigmoid(beta * lo_w) + F.logsigmoid(-beta * lo_l)
    loss = nll - lam * align
    metrics = reward_metrics(beta * lo_w, beta * lo_l)
    metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, _policy_logps_metrics(inputs, metrics))
