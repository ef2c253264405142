"""Pairwise losses with a reference model: DPO and its closest relatives.

Notation (METHODS.md section 0): ``r(y) = lp(y) - lr(y)`` is the policy/reference log-ratio of a
completion summed over its tokens, ``h = r(y_w) - r(y_l)`` the DPO margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput, pairwise_metrics
from .registry import Needs, register_loss

PAIRS_WITH_REFERENCE = Needs(reference=True, data="pairs")


def _check_flip_rate(name: str, eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"{name}: eps (label-flip rate) must be in [0, 0.5), got {eps}")


@register_loss(
    "dpo",
    family="pairwise",
    source="Rafailov et al. 2023, Direct Preference Optimization, arXiv 2305.18290, Eq. 7",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("sigmoid",),
)
def dpo_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """DPO: ``L = -log sigmoid(beta * h)``, ``h = (lp_w - lr_w) - (lp_l - lr_l)``.

    Source: Rafailov et al. 2023, arXiv 2305.18290, Eq. 7. Equals TRL's ``loss_type="sigmoid"``.
    Shapes: every log-prob [B] (summed over completion tokens); returns loss [B].
    """
    h = inputs.margin()
    loss = -F.logsigmoid(beta * h)
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "ipo",
    family="pairwise",
    source="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
    "Preferences, arXiv 2310.12036, Eq. 17",
    needs=PAIRS_WITH_REFERENCE,
)
def ipo_loss(inputs: LossInputs, beta: float = 0.1, length_normalize: bool = True) -> LossOutput:
    """IPO: ``L = (h_bar - 1/(2*beta))^2`` where ``beta`` is the paper's regulariser tau.

    ``h_bar = r(y_w)/|y_w| - r(y_l)/|y_l|`` with ``length_normalize=True`` (default; TRL and HALOs
    average per token, which TRL notes was confirmed with the IPO authors) and ``h_bar = h``
    (the paper's Eq. 17 as written) with ``length_normalize=False``.
    Source: Azar et al. 2023, arXiv 2310.12036. Same value as TRL ``loss_type="ipo"``.
    """
    if beta <= 0:
        raise ValueError(f"ipo: beta (tau) must be > 0, got {beta}")
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    if length_normalize:
        inputs.require("chosen_lengths", "rejected_lengths")
        r_w = r_w / inputs.chosen_lengths.to(r_w.dtype).clamp_min(1)
        r_l = r_l / inputs.rejected_lengths.to(r_l.dtype).clamp_min(1)
    loss = (r_w - r_l - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "cdpo",
    family="pairwise",
    source="Mitchell 2023, A note on DPO with noisy preferences (conservative DPO), "
    "ericmitchell.ai/cdpo.pdf; TRL v0.25 sigmoid with label_smoothing; HALOs CDPOTrainer",
    needs=PAIRS_WITH_REFERENCE,
)
def cdpo_loss(inputs: LossInputs, beta: float = 0.1, eps: float = 0.2) -> LossOutput:
    """Conservative DPO (label smoothing): ``L = -(1-eps) logsig(beta h) - eps logsig(-beta h)``.

    ``eps`` in [0, 0.5) is the assumed label-flip rate; default 0.2 as in HALOs. ``eps=0`` is DPO.
    Source: Mitchell 2023 (cDPO note); TRL v0.25 ``sigmoid`` with ``label_smoothing=eps``.
    """
    _check_flip_rate("cdpo", eps)
    z = beta * inputs.margin()
    loss = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "rdpo",
    family="pairwise",
    source="Chowdhury et al. 2024, Provably Robust DPO, arXiv 2403.00409, Eq. 8",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("robust",),
)
def rdpo_loss(inputs: LossInputs, beta: float = 0.1, eps: float = 0.1) -> LossOutput:
    """Robust DPO: ``L = [-(1-eps) logsig(beta h) + eps logsig(-beta h)] / (1 - 2 eps)``.

    An unbiased estimate of the clean DPO loss under label-flip rate ``eps`` in [0, 0.5); can be
    negative per example. Note the sign: the flipped term is subtracted (cDPO adds it).
    Source: Chowdhury et al. 2024, arXiv 2403.00409. Same value as TRL ``loss_type="robust"``
    (TRL passes ``eps`` as ``label_smoothing``).
    """
    _check_flip_rate("rdpo", eps)
    z = beta * inputs.margin()
    loss = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "hinge",
    family="pairwise",
    source="Zhao et al. 2023, SLiC-HF, arXiv 2305.10425; Liu et al. 2023, RSO (hinge-norm), "
    "arXiv 2309.06657; TRL loss_type='hinge'",
    needs=PAIRS_WITH_REFERENCE,
)
def hinge_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """Hinge (SLiC-HF, reference-normalised as in RSO): ``L = max(0, 1 - beta * h)``.

    Source: SLiC-HF arXiv 2305.10425 with RSO's normalisation arXiv 2309.06657; same value as
    TRL ``loss_type="hinge"`` (``relu(1 - beta * logits)``).
    """
    loss = torch.relu(1.0 - beta * inputs.margin())
    return LossOutput(loss, pairwise_metrics(inputs, beta))
