"""Pairwise losses with a reference model that are functions of the DPO margin alone.

DPO and its closest relatives (IPO, cDPO, rDPO, hinge, EXO, DiscoPOP, length-normalised DPO): each
is a function of ``h = r(y_w) - r(y_l)``, possibly per token. Notation: ``docs/losses/notation.md``
(``r(y) = lp(y) - lr(y)`` summed over completion tokens, ``z = beta * h``). Every loss returns a
per-example loss [B].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._numerics import capped_exp
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
        r_w, r_l = inputs.length_normalized(r_w, "chosen"), inputs.length_normalized(r_l, "rejected")
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


@register_loss(
    "exo",
    family="pairwise",
    source="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, "
    "arXiv 2402.00856 (EXO-pref); official haozheji/exact-optimization; TRL loss_type='exo_pair'",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("exo_pair",),
)
def exo_loss(inputs: LossInputs, beta: float = 0.1, eps: float = 1e-3) -> LossOutput:
    """EXO (pairwise): ``L = KL(q || [1-eps, eps])`` with ``q = [sig(z), sig(-z)]``, ``z = beta*h``.

    Written out: ``L = sig(z) (logsig(z) - log(1-eps)) + sig(-z) (logsig(-z) - log eps)``.
    ``eps`` > 0 is required; default 1e-3 (paper, and TRL v0.25, which substitutes 1e-3 when
    ``label_smoothing`` is 0). TRL HEAD passes ``label_smoothing`` as ``eps`` with no substitute, so
    its default 0 gives an infinite loss there; set ``eps`` here to TRL's ``label_smoothing`` to match.
    Source: Ji et al. 2024, arXiv 2402.00856.
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"exo: eps must be in (0, 1), got {eps}")
    z = beta * inputs.margin()
    log_qw, log_ql = F.logsigmoid(z), F.logsigmoid(-z)
    loss = log_qw.exp() * (log_qw - math.log1p(-eps)) + log_ql.exp() * (log_ql - math.log(eps))
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "discopop",
    family="pairwise",
    source="Chris Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large "
    "Language Models, arXiv 2406.08414 (LRML); TRL loss_type='discopop'",
    needs=PAIRS_WITH_REFERENCE,
)
def discopop_loss(inputs: LossInputs, beta: float = 0.05, tau: float = 0.05) -> LossOutput:
    """DiscoPOP / LRML: ``L = (1 - m) (-logsig(z)) + m exp(-z)``, ``m = sig(z/tau)``, ``z = beta*h``.

    A log-ratio-modulated blend of the logistic and exponential losses. Defaults ``beta`` 0.05 and
    ``tau`` 0.05 (paper, TRL doc; TRL calls ``tau`` ``discopop_tau``). Computed as
    ``m exp(-z) = exp(logsig(z/tau) - z)`` with a clamped exponent: the same value as TRL
    ``loss_type="discopop"`` wherever TRL's is finite; for very negative ``z`` TRL computes
    ``0 * inf = nan`` where this returns the finite limit.
    Source: Lu et al. 2024, arXiv 2406.08414.
    """
    if tau <= 0:
        raise ValueError(f"discopop: tau must be > 0, got {tau}")
    z = beta * inputs.margin()
    logistic = -F.logsigmoid(z)
    exp_part = capped_exp(F.logsigmoid(z / tau) - z)
    loss = torch.sigmoid(-z / tau) * logistic + exp_part
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "sigmoid_norm",
    family="pairwise",
    source="TRL DPOTrainer loss_type='sigmoid_norm' (length-normalised DPO); cf. SimPO, "
    "Meng et al. 2024, arXiv 2405.14734",
    needs=PAIRS_WITH_REFERENCE,
)
def sigmoid_norm_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """Length-normalised DPO: ``L = -logsig(beta (r_w/|y_w| - r_l/|y_l|))``.

    DPO on per-token log-ratios (policy minus reference, each divided by its completion length,
    lengths clamped to >= 1). TRL's ``sigmoid_norm`` divides its (reference-adjusted) scores by the
    completion-token count in the same way. With the reference log-probs set to zero it equals
    ``simpo`` with ``gamma = 0``. Reward metrics use ``beta * r`` (un-normalised), as TRL logs them.
    Source: TRL ``loss_type="sigmoid_norm"``.
    """
    r_w = inputs.length_normalized(inputs.chosen_logratios(), "chosen")
    r_l = inputs.length_normalized(inputs.rejected_logratios(), "rejected")
    loss = -F.logsigmoid(beta * (r_w - r_l))
    return LossOutput(loss, pairwise_metrics(inputs, beta))
