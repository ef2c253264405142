"""More pairwise losses with a reference model: EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, Cal-DPO,
length-normalised DPO and MODPO.

Notation (METHODS.md section 0): ``r(y) = lp(y) - lr(y)`` summed over completion tokens,
``h = r(y_w) - r(y_l)``, ``z = beta * h``. Every loss returns a per-example loss [B].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ._distributed import RunningMean, gather_detached, gather_with_grad
from ._numerics import capped_exp, require_extra
from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .registry import Needs, register_loss

PAIRS_WITH_REFERENCE = Needs(reference=True, data="pairs")


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


# ------------------------------------------------------------------------------------------------
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
    "nca",
    family="pairwise",
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


# ------------------------------------------------------------------------------------------------
@register_loss(
    "bco_pair",
    family="pairwise",
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


# ------------------------------------------------------------------------------------------------
@register_loss(
    "sppo_hard",
    family="pairwise",
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
    family="pairwise",
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


# ------------------------------------------------------------------------------------------------
def _aot(inputs: LossInputs, beta: float, label_smoothing: float, unpaired: bool) -> LossOutput:
    if unpaired:
        a, b = inputs.chosen_logratios(), inputs.rejected_logratios()
        a_all, offset = gather_with_grad(a)
        b_all, _ = gather_with_grad(b)
    else:
        inputs.require("reference_chosen_logps", "reference_rejected_logps")
        a = inputs.policy_chosen_logps - inputs.policy_rejected_logps
        b = inputs.reference_chosen_logps - inputs.reference_rejected_logps
        a_all, offset = gather_with_grad(a)
        b_all = gather_detached(b)
    d = torch.sort(a_all, dim=0)[0] - torch.sort(b_all, dim=0)[0]
    loss_all = _smoothed_logistic(beta * d, label_smoothing)
    loss = loss_all[offset: offset + a.shape[0]]
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "aot",
    family="pairwise",
    source="Melnychuk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv 2406.05882; TRL loss_type='aot'",
    needs=Needs(reference=True, data="pairs", batch_coupled=True),
)
def aot_loss(inputs: LossInputs, beta: float = 0.01, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (paired): ``d = sort_B(lp_w - lp_l) - sort_B(lr_w - lr_l)``; ``L = -(1-eps) logsig(beta d) - eps logsig(-beta d)``.

    ``eps`` = ``label_smoothing`` (TRL's name), default 0. Default ``beta`` 0.01 (TRL doc).
    Same value as TRL ``loss_type="aot"`` on one process.
    The sort runs over the batch (quantile matching), so entry ``i`` of the returned loss belongs to
    the ``i``-th quantile, not to example ``i``; only the batch mean is meaningful and per-example
    weights (WPO, MADPO) cannot be applied. Batch-coupled: when run distributed, the margins are
    gathered from every process with an autograd all-gather (gradients flow back to each
    process's own examples), sorted globally, and each process returns its slice, so
    the mean over processes is the loss of the global batch. TRL sorts each process's batch alone;
    on one process the two are identical.
    Source: Melnychuk et al. 2024, arXiv 2406.05882.
    """
    return _aot(inputs, beta, label_smoothing, unpaired=False)


@register_loss(
    "aot_unpaired",
    family="pairwise",
    source="Melnychuk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv 2406.05882; TRL loss_type='aot_unpaired'",
    needs=Needs(reference=True, data="pairs", batch_coupled=True),
)
def aot_unpaired_loss(inputs: LossInputs, beta: float = 0.01, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (unpaired): ``d = sort_B(r_w) - sort_B(r_l)``; ``L = -(1-eps) logsig(beta d) - eps logsig(-beta d)``.

    Matches the chosen and rejected reward distributions without using the pairing.
    ``eps`` = ``label_smoothing`` (TRL's name), default 0; default ``beta`` 0.01 (TRL doc).
    Same value as TRL ``loss_type="aot_unpaired"`` on one process.
    The sort runs over the batch (quantile matching), so entry ``i`` of the returned loss belongs to
    the ``i``-th quantile, not to example ``i``; only the batch mean is meaningful and per-example
    weights (WPO, MADPO) cannot be applied. Batch-coupled: when run distributed, the margins are
    gathered from every process with an autograd all-gather (gradients flow back to each
    process's own examples), sorted globally, and each process returns its slice, so
    the mean over processes is the loss of the global batch. TRL sorts each process's batch alone;
    on one process the two are identical.
    Source: Melnychuk et al. 2024, arXiv 2406.05882.
    """
    return _aot(inputs, beta, label_smoothing, unpaired=True)


# ------------------------------------------------------------------------------------------------
@register_loss(
    "apo_zero",
    family="pairwise",
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
    family="pairwise",
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


# ------------------------------------------------------------------------------------------------
@register_loss(
    "cal_dpo",
    family="pairwise",
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
    Verification: PARTIAL in METHODS.md (A14); the authors' loss code has since been read and agrees
    with the formula above with ``c = 0.5``; the paper text itself was not read.
    Source: Xiao et al. 2024 (Cal-DPO).
    """
    if beta <= 0:
        raise ValueError(f"cal_dpo: beta must be > 0, got {beta}")
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    if length_normalize:
        inputs.require("chosen_lengths", "rejected_lengths")
        r_w = r_w / inputs.chosen_lengths.to(r_w.dtype).clamp_min(1)
        r_l = r_l / inputs.rejected_lengths.to(r_l.dtype).clamp_min(1)
    target = 1.0 / (2.0 * beta)
    loss = -F.logsigmoid(r_w - r_l) + calibration_weight * ((r_w - target) ** 2 + (r_l + target) ** 2)
    metrics = reward_metrics(r_w, r_l)
    metrics["logps/chosen"] = inputs.policy_chosen_logps.detach().mean()
    metrics["logps/rejected"] = inputs.policy_rejected_logps.detach().mean()
    return LossOutput(loss, metrics)


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
    inputs.require("chosen_lengths", "rejected_lengths")
    r_w = inputs.chosen_logratios() / inputs.chosen_lengths.to(inputs.policy_chosen_logps.dtype).clamp_min(1)
    r_l = inputs.rejected_logratios() / inputs.rejected_lengths.to(inputs.policy_rejected_logps.dtype).clamp_min(1)
    loss = -F.logsigmoid(beta * (r_w - r_l))
    return LossOutput(loss, pairwise_metrics(inputs, beta))


# ------------------------------------------------------------------------------------------------
@register_loss(
    "modpo",
    family="pairwise",
    source="Zhou et al. 2023, Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct "
    "Preference Optimization, arXiv 2310.03708; official ZHZisZZ/modpo modpo_loss",
    needs=Needs(reference=True, data="pairs", extras=("modpo_chosen_scores", "modpo_rejected_scores")),
)
def modpo_loss(
    inputs: LossInputs,
    beta: float = 0.1,
    weights: Sequence[float] = (0.5, 0.5),
    loss_type: str = "sigmoid",
) -> LossOutput:
    """MODPO: ``R(y) = (beta r(y) - w[1:] . m(y)) / w[0]``; ``L = -logsig(R(y_w) - R(y_l))``.

    ``m(y)`` [B, n-1] are the scores of ``y`` under the n-1 other objectives' frozen (margin) reward
    models, from ``extras["modpo_chosen_scores"]`` and ``extras["modpo_rejected_scores"]``.
    ``weights = (w0, w1, ..., w_{n-1})`` lie on the simplex, ``w0`` for the objective whose pairs are
    trained; example ``(0.5, 0.5)``, ``beta`` 0.1. ``loss_type="hinge"`` gives
    ``relu(1 - (R_w - R_l))``. Sweep ``weights`` to trace a Pareto front.
    Source: Zhou et al. 2023, arXiv 2310.03708.
    """
    w = [float(x) for x in weights]
    if len(w) < 2 or w[0] <= 0:
        raise ValueError(f"modpo: weights must have >= 2 entries with weights[0] > 0, got {weights}")
    m_w = require_extra(inputs, "modpo_chosen_scores", "modpo")
    m_l = require_extra(inputs, "modpo_rejected_scores", "modpo")
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    if m_w.dim() == 1:
        m_w, m_l = m_w.unsqueeze(-1), m_l.unsqueeze(-1)
    if m_w.shape[-1] != len(w) - 1 or m_l.shape[-1] != len(w) - 1:
        raise ValueError(
            f"modpo: {len(w) - 1} margin weight(s) but scores have {m_w.shape[-1]} column(s)"
        )
    w_rest = torch.tensor(w[1:], dtype=r_w.dtype, device=r_w.device)
    big_r_w = (beta * r_w - m_w.to(r_w.dtype) @ w_rest) / w[0]
    big_r_l = (beta * r_l - m_l.to(r_l.dtype) @ w_rest) / w[0]
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(big_r_w - big_r_l)
    elif loss_type == "hinge":
        loss = torch.relu(1.0 - (big_r_w - big_r_l))
    else:
        raise ValueError(f"modpo: loss_type must be 'sigmoid' or 'hinge', got {loss_type!r}")
    metrics = reward_metrics(big_r_w, big_r_l)
    metrics["logps/chosen"] = inputs.policy_chosen_logps.detach().mean()
    metrics["logps/rejected"] = inputs.policy_rejected_logps.detach().mean()
    return LossOutput(loss, metrics)

