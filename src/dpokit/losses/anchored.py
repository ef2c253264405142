"""Pairwise losses that anchor each response's reward on its own, not only their difference.

NCA, APO-zero/APO-down, SPPO (soft and hard), Cal-DPO and pairwise BCO: each term pushes ``r(y_w)``
or ``r(y_l)`` towards a target (0, a win probability, ``+-1/(2 beta)``, a running mean), so the
chosen likelihood is not free to fall as long as the margin grows. Notation:
``docs/losses/notation.md`` (``r(y) = lp(y) - lr(y)``, ``h = r(y_w) - r(y_l)``). Every loss
returns a per-example loss [B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._distributed import RunningMean
from ._numerics import require_extra
from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .pairwise import PAIRS_WITH_REFERENCE
from .registry import Needs, register_loss


@register_loss(
    "nca",
    family="anchored",
    source="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, "
    "arXiv 2402.05369; official thu-ml/Noise-Contrastive-Alignment; TRL loss_type='nca_pair'",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("nca_pair",),
)
def nca_loss(inputs: LossInputs, beta: float = 0.01) -> LossOutput:
    """NCA (pairwise): ``L = -logsig(beta r_w) - 0.5 logsig(-beta r_w) - 0.5 logsig(-beta r_l)``.

    Unlike DPO it anchors each response's own reward, so the chosen likelihood is not free to fall.
    Default ``beta`` 0.01 (TRL documentation). Same value as TRL ``loss_type="nca_pair"``.
    Source: Chen et al. 2024, arXiv 2402.05369.
    """
    rw = beta * inputs.chosen_logratios()
    rl = beta * inputs.rejected_logratios()
    loss = -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "apo_zero",
    family="anchored",
    source="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv 2408.06266, Eq. 7; TRL loss_type='apo_zero'",
    needs=PAIRS_WITH_REFERENCE,
)
def apo_zero_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """APO-zero: ``L = (1 - sig(beta r_w)) + sig(beta r_l)``.

    For data whose chosen outputs are better than the model's own: raise the chosen likelihood,
    lower the rejected. Default ``beta`` 0.1 (TRL doc). Same value as TRL ``loss_type="apo_zero"``.
    Source: D'Oosterlinck et al. 2024, arXiv 2408.06266.
    """
    loss = torch.sigmoid(-beta * inputs.chosen_logratios()) + torch.sigmoid(beta * inputs.rejected_logratios())
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "apo_down",
    family="anchored",
    source="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv 2408.06266, Eq. 8; TRL loss_type='apo_down'",
    needs=PAIRS_WITH_REFERENCE,
)
def apo_down_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """APO-down: ``L = sig(beta r_w) + (1 - sig(beta h))``.

    For data whose chosen outputs are worse than the model's own: lower both likelihoods, the
    rejected more. Default ``beta`` 0.1 (TRL doc). Same value as TRL ``loss_type="apo_down"``.
    Source: D'Oosterlinck et al. 2024, arXiv 2408.06266.
    """
    loss = torch.sigmoid(beta * inputs.chosen_logratios()) + torch.sigmoid(-beta * inputs.margin())
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "sppo_hard",
    family="anchored",
    source="Wu et al. 2024, Self-Play Preference Optimization, arXiv 2405.00675; "
    "TRL loss_type='sppo_hard'",
    needs=PAIRS_WITH_REFERENCE,
)
def sppo_hard_loss(inputs: LossInputs, beta: float = 1e-3) -> LossOutput:
    """SPPO with hard win probabilities: ``L = (r_w - 0.5/beta)^2 + (r_l + 0.5/beta)^2``.

    The SPPO square loss with ``P(y_w wins) = 1`` and ``P(y_l wins) = 0``. Same value as TRL
    ``loss_type="sppo_hard"`` (no 1/2 factor, unlike the official ``sppo`` loss). ``beta = 1/eta``,
    default 1e-3 (official ``scripts/pipeline.sh``, TRL doc). The reference should be the previous
    self-play iterate. Source: Wu et al. 2024, arXiv 2405.00675.
    """
    if beta <= 0:
        raise ValueError(f"sppo_hard: beta must be > 0, got {beta}")
    loss = (inputs.chosen_logratios() - 0.5 / beta) ** 2 + (inputs.rejected_logratios() + 0.5 / beta) ** 2
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "sppo",
    family="anchored",
    source="Wu et al. 2024, Self-Play Preference Optimization, arXiv 2405.00675; official "
    "uclaml/SPPO sppo/trainer.py (loss_type 'sppo')",
    needs=Needs(reference=True, data="pairs", extras=("win_prob_chosen", "win_prob_rejected")),
)
def sppo_loss(inputs: LossInputs, beta: float = 1e-3) -> LossOutput:
    """SPPO: ``L = 0.5 [(r_w - (P_w - 0.5)/beta)^2 + (r_l - (P_l - 0.5)/beta)^2]``.

    ``P_w``/``P_l`` [B] are the estimated win rates of ``y_w``/``y_l`` against the current policy's
    samples (official code: PairRM probabilities averaged over K=5 samples; columns
    ``chosen_probs_win``/``chosen_probs_lose``), read from ``extras["win_prob_chosen"]`` and
    ``extras["win_prob_rejected"]``. ``beta = 1/eta`` = 1e-3 (official ``pipeline.sh``). With
    ``P_w = 1, P_l = 0`` this is half of ``sppo_hard``. Source: Wu et al. 2024, arXiv 2405.00675.
    """
    if beta <= 0:
        raise ValueError(f"sppo: beta must be > 0, got {beta}")
    p_w = require_extra(inputs, "win_prob_chosen", "sppo")
    p_l = require_extra(inputs, "win_prob_rejected", "sppo")
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    loss = 0.5 * ((r_w - (p_w.to(r_w.dtype) - 0.5) / beta) ** 2 + (r_l - (p_l.to(r_l.dtype) - 0.5) / beta) ** 2)
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "cal_dpo",
    family="anchored",
    source="Xiao et al. 2024, Cal-DPO: Calibrated Direct Preference Optimization, NeurIPS 2024; "
    "official tengxiao1/Cal-DPO scripts/dpo_trainer.py; restated in arXiv 2502.01237",
    needs=PAIRS_WITH_REFERENCE,
    verified="partial",
)
def cal_dpo_loss(
    inputs: LossInputs,
    beta: float = 1e-3,
    calibration_weight: float = 0.5,
    length_normalize: bool = False,
) -> LossOutput:
    """Cal-DPO: ``L = -logsig(r_w - r_l) + c [(r_w - 1/(2beta))^2 + (r_l + 1/(2beta))^2]``, r un-scaled.

    The logistic term uses the un-scaled margin; the squared terms calibrate the implicit rewards to
    ``+-1/(2 beta)``. ``c = calibration_weight``: 0.5 in the authors' code (``DPO_loss + 0.5*Cal_loss``),
    1.0 in the restatement of arXiv 2502.01237. ``length_normalize=True`` uses token-mean log-probs
    (the code's ``Cal-DPO-average``). Default ``beta`` 1e-3 (the authors' run script; their config
    file has 2e-3). Reward metrics use ``r`` itself (scale 1), as the logistic term does.
    Verification: PARTIAL. The formula was first taken from the restatement in arXiv 2502.01237
    (``c = 1``); the authors' loss code has since been read and agrees with the formula above with
    ``c = 0.5``; the paper text itself was not read.
    Source: Xiao et al. 2024 (Cal-DPO).
    """
    if beta <= 0:
        raise ValueError(f"cal_dpo: beta must be > 0, got {beta}")
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    if length_normalize:
        r_w, r_l = inputs.length_normalized(r_w, "chosen"), inputs.length_normalized(r_l, "rejected")
    target = 1.0 / (2.0 * beta)
    loss = -F.logsigmoid(r_w - r_l) + calibration_weight * ((r_w - target) ** 2 + (r_l + target) ** 2)
    metrics = reward_metrics(r_w, r_l, inputs)
    return LossOutput(loss, metrics)


@register_loss(
    "bco_pair",
    family="anchored",
    source="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, "
    "arXiv 2404.04656; TRL v0.25 dpo_loss 'bco_pair' (running mean) and TRL HEAD (no shift)",
    needs=Needs(reference=True, data="pairs", batch_coupled=True),
)
class BCOPairLoss:
    """BCO (pairwise): ``L = -logsig(beta r_w - delta) - logsig(-(beta r_l - delta))``.

    ``delta`` is the running mean of every reward ``beta*r`` seen in training (chosen and rejected),
    updated with the current batch (no gradient) *before* the loss, and only while ``training`` is
    True; it is checkpointed by ``state_dict``. With ``running_mean=False``, ``delta = 0`` (the
    shift-free form TRL HEAD ships as ``bco_pair``). Default ``beta`` 0.01 (TRL doc, paper Sec. C).

    Batch-coupled: when run distributed, the running mean gathers every process's rewards.
    Difference from TRL v0.25: TRL's ``RunningMoments`` is fed one batch *mean* per step (each step
    weighs the same); here every reward counts once. The two agree when batch sizes are constant.
    Source: Jung et al. 2024, arXiv 2404.04656.
    """

    def __init__(self, beta: float = 0.01, running_mean: bool = True):
        self.beta = beta
        self.running_mean = running_mean
        self.running = RunningMean()
        self.training = True

    def __call__(self, inputs: LossInputs) -> LossOutput:
        rw = self.beta * inputs.chosen_logratios()
        rl = self.beta * inputs.rejected_logratios()
        if self.running_mean:
            if self.training:
                self.running.update(torch.cat([rw, rl]))
            delta = self.running.mean
        else:
            delta = 0.0
        loss = -F.logsigmoid(rw - delta) - F.logsigmoid(-(rl - delta))
        metrics = pairwise_metrics(inputs, self.beta)
        metrics["bco/delta"] = torch.tensor(float(delta), dtype=loss.dtype, device=loss.device)
        return LossOutput(loss, metrics)

    def state_dict(self):
        return self.running.state_dict()

    def load_state_dict(self, state) -> None:
        self.running.load_state_dict(state)
