"""Reference-free pairwise losses: only policy log-probs are needed."""

from __future__ import annotations

import torch.nn.functional as F

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
    metrics = reward_metrics(beta * avg_w, beta * avg_l)
    metrics["logps/chosen"] = inputs.policy_chosen_logps.detach().mean()
    metrics["logps/rejected"] = inputs.policy_rejected_logps.detach().mean()
    return LossOutput(loss, metrics)
