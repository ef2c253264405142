"""DPO with a regulariser built in (RPO, Flex-DPO, SFT-DPO, phi-DPO) and the bare ``sft`` term.

Notation (``docs/losses/notation.md``): ``r(y) = lp(y) - lr(y)``, ``h = r_w - r_l``, ``z = beta*h``.
``sft`` is a term to add to any loss by composition (``"dpo + 0.2*sft"``) rather than used alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._numerics import nll_term
from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .registry import Needs, register_loss

PAIRS_WITH_REFERENCE = Needs(reference=True, data="pairs")


@register_loss(
    "rpo",
    family="regularized",
    source="Liu et al. 2024, Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly "
    "an Adversarial Regularizer, arXiv 2405.16436; official YSLIU627/Regularized-Preference-Optimization",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("rpo_liu",),
)
def rpo_loss(inputs: LossInputs, beta: float = 0.01, eta: float = 0.005, variant: str = "sum") -> LossOutput:
    """RPO (Liu et al.): DPO plus an SFT term on the chosen response, in the authors' two variants.

    * ``variant="sum"`` (paper main text, alignment-handbook code, the default):
      ``L = -logsig(beta h) - eta * beta * lp_w`` with ``lp_w`` the summed chosen log-prob.
      Defaults ``eta`` 0.005, ``beta`` 0.01 (Zephyr-7B-beta on UltraFeedback).
    * ``variant="mean"`` (App. F, OpenRLHF code): ``L = -logsig(beta h) + eta * (-lp_w/|y_w|)``, not
      scaled by beta; the authors' setting is ``eta`` 0.2, ``beta`` 0.5 (pass them explicitly).

    TRL's recipe ``loss_type=["sigmoid","sft"], loss_weights=[1.0, 0.005], beta=0.01`` (pooled token-mean
    NLL with weight 0.005) matches neither variant exactly.
    Name collision: TRL's older ``rpo_alpha`` and the SPPO repo's ``loss_type: rpo`` are *Iterative
    Reasoning Preference Optimization* (Pang et al. 2024, arXiv 2404.19733):
    ``L_dpo + alpha * NLL(y_w)/|y_w|`` with alpha 1.0; write that as ``"dpo + 1.0*sft"``.
    Source: Liu et al. 2024, arXiv 2405.16436.
    """
    dpo = -F.logsigmoid(beta * inputs.margin())
    if variant == "sum":
        reg = -eta * beta * inputs.policy_chosen_logps
    elif variant == "mean":
        reg = eta * nll_term(inputs, "example_mean")
    else:
        raise ValueError(f"rpo: variant must be 'sum' or 'mean', got {variant!r}")
    metrics = pairwise_metrics(inputs, beta)
    metrics["rpo/regularizer"] = reg.detach().mean()
    return LossOutput(dpo + reg, metrics)


@register_loss(
    "flex_dpo",
    family="regularized",
    source="Yan et al. 2024, 3D-Properties: Identifying Challenges in DPO and Charting a Path Forward, "
    "arXiv 2406.07327 (ICLR 2025), App. B.2.1",
    needs=PAIRS_WITH_REFERENCE,
)
def flex_dpo_loss(inputs: LossInputs, beta_w: float = 0.1, beta_l: float = 0.08) -> LossOutput:
    """Flex-DPO: ``L = -logsig(beta_w r_w - beta_l r_l)``, separate temperatures for chosen/rejected.

    Lowering ``beta_l`` below ``beta_w`` slows the fall of the rejected likelihood (Proposition 1).
    Defaults ``beta_w`` 0.1, ``beta_l`` 0.08 (Table 9; Fig. 4 sweeps ``beta_l`` in [0.02, 0.14]).
    ``beta_w == beta_l`` is DPO. Source: Yan et al. 2024, arXiv 2406.07327, App. B.2.1.
    """
    rw, rl = beta_w * inputs.chosen_logratios(), beta_l * inputs.rejected_logratios()
    loss = -F.logsigmoid(rw - rl)
    metrics = reward_metrics(rw, rl, inputs)
    return LossOutput(loss, metrics)


@register_loss(
    "sft_dpo",
    family="regularized",
    source="Yan et al. 2024, 3D-Properties: Identifying Challenges in DPO and Charting a Path Forward, "
    "arXiv 2406.07327 (ICLR 2025), App. B.2.2, Eq. 7",
    needs=PAIRS_WITH_REFERENCE,
)
def sft_dpo_loss(inputs: LossInputs, beta: float = 0.1, gamma: float = 0.01) -> LossOutput:
    """SFT-DPO: ``L = -logsig(beta h) - gamma * lp_w`` (summed chosen log-prob, not scaled by beta).

    Keeps the chosen gradient from vanishing as the rejected likelihood collapses. The paper gives
    no value for ``gamma``; the default 0.01 is dpokit's choice, tune it. ``beta`` 0.1 (paper's DPO
    setting). Source: Yan et al. 2024, arXiv 2406.07327, Eq. 7.
    """
    reg = -gamma * inputs.policy_chosen_logps
    metrics = pairwise_metrics(inputs, beta)
    metrics["sft_dpo/regularizer"] = reg.detach().mean()
    return LossOutput(-F.logsigmoid(beta * inputs.margin()) + reg, metrics)


@register_loss(
    "phi_dpo",
    family="regularized",
    source="Truong et al. 2026, phi-DPO: Fairness Direct Preference Optimization Approach to Continual "
    "Learning in Large Multimodal Models, arXiv 2602.22601 (CVPR 2026), Eqs. 14 and 17",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("faidpo",),
)
def phi_dpo_loss(
    inputs: LossInputs, beta: float = 0.1, gamma: float = 2.0, sft_weight: float = 0.0
) -> LossOutput:
    """phi-DPO (focal DPO): ``L = -(1 - sig(z))^gamma * logsig(z) + sft_weight * NLL(y_w)``, ``z = beta*h``.

    The focal factor down-weights pairs the model already ranks well; it is not detached (the
    paper differentiates through it). Computed as ``exp(gamma * logsig(-z))``. ``gamma = 0`` is DPO.
    Defaults ``beta`` 0.1, ``gamma`` 2.0 (ablations, Tables 5-6). The paper's full objective (Eq. 17)
    adds ``NLL(y_w)`` with weight 1: set ``sft_weight=1.0`` (per-example token-mean NLL); it defaults
    to 0 so the loss alone is Eq. 14. Not FocalPO (arXiv 2501.06645), which uses ``sig(z)^gamma``.
    Source: Truong et al. 2026, arXiv 2602.22601.
    """
    z = beta * inputs.margin()
    loss = -torch.exp(gamma * F.logsigmoid(-z)) * F.logsigmoid(z)
    metrics = pairwise_metrics(inputs, beta)
    if sft_weight != 0:
        nll = nll_term(inputs, "example_mean")
        loss = loss + sft_weight * nll
        metrics["nll_loss"] = nll.detach().mean()
    return LossOutput(loss, metrics)


@register_loss(
    "sft",
    family="regularized",
    source="Negative log-likelihood of the chosen completion, as TRL's loss_type='sft' "
    "(used by RPO/MPO recipes, e.g. MPO arXiv 2411.10442)",
    needs=Needs(reference=False, data="pairs"),
    aliases=("nll",),
)
def sft_loss(inputs: LossInputs, length_normalize: bool = True) -> LossOutput:
    """SFT term: ``L = -lp(y_w)/|y_w|`` (token mean, TRL's ``sft``) or ``-lp(y_w)`` (sum).

    Compose it with a preference loss, e.g. ``"dpo + 0.2*sft"``. TRL pools the token mean over all
    chosen tokens of the batch; this averages per example first (equal when lengths are equal).
    Source: negative log-likelihood of the chosen completion; TRL ``loss_type="sft"``.
    """
    if length_normalize:
        nll = -inputs.mean_logps("chosen")
    else:
        inputs.require("policy_chosen_logps")
        nll = -inputs.policy_chosen_logps
    return LossOutput(nll, {"nll": nll.detach().mean()})
