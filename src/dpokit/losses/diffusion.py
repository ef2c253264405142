"""Preference losses of diffusion models, on the denoising surrogate the diffusion scorer writes.

The diffusion scorer (:mod:`dpokit.scoring.diffusion`) fills the usual fields with
``lp(x) = -e_pi(x)`` and ``lr(x) = -e_ref(x)``, where ``e(x) = mean_D (eps_hat(x_t, t, c) - target)^2``
is the per-sample denoising error (averaged over the D elements of a sample, as the official code
does). The *diffusion score* of a sample is

    s(x) = e_pi(x) - e_ref(x) = -(lp(x) - lr(x)) = -r(x)

(lower: the policy denoises ``x`` better than the reference does). Diffusion-DPO is the ``dpo``
loss on these fields; this module holds the methods built on top of it. ``beta`` here is
``0.5 * beta_dpo`` of the Salesforce/SmPO/InPO code (``-logsigmoid(-0.5 * beta_dpo * (...))``), so
their published ``beta_dpo = 5000`` is ``beta = 2500``. What a loss needs beyond the surrogate
(reward scores, per-segment errors and labels) comes through ``LossInputs.extras`` under the names
its ``Needs.extras`` declares. How ``x_t`` is obtained (forward noising, DDIM or ReNoise inversion,
online trajectories) is the scorer's business, never the loss's. Docs: ``docs/losses/diffusion.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .listwise import list_metrics
from .registry import Needs, register_loss

Tensor = torch.Tensor

PAIRS_WITH_REFERENCE = Needs(reference=True, data="pairs")

# PickScore range on Pick-a-Pic v2, as hard-coded in the official SmPO train.py
PICKSCORE_MIN = 0.11543526500463486
PICKSCORE_MAX = 0.28201571106910706

SEGMENT_EXTRAS = ("segment_policy_logps", "segment_reference_logps", "segment_labels")


def _check_beta(name: str, beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")


def _extra(inputs: LossInputs, name: str, key: str) -> Tensor:
    value = inputs.extras.get(key)
    if value is None:
        raise ValueError(f"{name}: this loss needs LossInputs.extras[{key!r}] but it was not provided "
                         f"(have: {sorted(inputs.extras) or 'none'})")
    return value


# ---- Diffusion-DRO -------------------------------------------------------------------------------
@register_loss(
    "diffusion_dro",
    family="diffusion",
    source="Wu, Ruan, Tseng, Shuai 2025, Diffusion-DRO, arXiv 2510.18353 (NeurIPS 2025); official "
    "basiclab/DiffusionDRO train.py (loss block)",
    needs=PAIRS_WITH_REFERENCE,
    aliases=("dro_hinge",),
)
def diffusion_dro_loss(inputs: LossInputs, margin: float = 0.001) -> LossOutput:
    """Diffusion-DRO: ``L = max(0, (s_e - s_p) + margin)``, a hinge ranking of diffusion scores.

    ``s_e = s(expert) = e_pi(x_e) - e_ref(x_e)`` is the score of a real (expert) image, the *chosen*
    sample; ``s_p = s(policy sample)`` is the score of an online sample of a lagged copy of the
    policy, the *rejected* sample. In the surrogate fields ``s = -(lp - lr)``, so
    ``L = max(0, margin - h)`` with DPO's margin ``h = r(x_e) - r(x_p)``, which is
    ``margin * hinge(beta = 1/margin)``. The expert must denoise better (relative to the reference)
    than the policy's own sample by at least ``margin``.
    The official code noises the expert image with fresh noise at the same ``t`` and prompt as the
    policy sample, whose ``(x_t, t)`` and target (the lagged model's own noise prediction) come from
    a replay buffer of online trajectories: that is the scorer's and the data's business.
    Default ``margin`` 0.001 (official default). Source: Wu et al. 2025, arXiv 2510.18353; the loss
    verified against the official basiclab/DiffusionDRO ``train.py`` (the paper's theory was not read).
    """
    if not margin > 0:
        raise ValueError(f"diffusion_dro: margin must be > 0, got {margin}")
    loss = torch.relu(margin - inputs.margin())
    return LossOutput(loss, pairwise_metrics(inputs, 1.0))


# ---- SmPO ------------------------------------------------------------------------------------------
def smpo_preference(chosen_score: Tensor, rejected_score: Tensor, score_min: float, score_max: float) -> Tensor:
    """SmPO's smoothed preference ``p = exp(n_w) / (exp(n_w) + exp(n_l))`` with min-max normalised
    scores ``n = (score - score_min) / (score_max - score_min)``; ``p = sigmoid(n_w - n_l)``."""
    scale = score_max - score_min
    n_w = (chosen_score - score_min) / scale
    n_l = (rejected_score - score_min) / scale
    return torch.sigmoid(n_w - n_l)


@register_loss(
    "smpo",
    family="diffusion",
    source="Lu et al. 2025, Smoothed Preference Optimization via ReNoise Inversion (SmPO-Diffusion), "
    "arXiv 2506.02698 (ICML 2025); official JaydenLyh/SmPO train.py",
    needs=Needs(reference=True, data="pairs", extras=("chosen_score", "rejected_score")),
)
def smpo_loss(inputs: LossInputs, beta: float = 2500.0, gamma: float = 10.0,
              score_min: float = PICKSCORE_MIN, score_max: float = PICKSCORE_MAX) -> LossOutput:
    """SmPO: ``L = -log sigmoid(beta * gamma * (2p - 1) * h)``, ``p`` the reward-smoothed preference.

    ``h = r(x_w) - r(x_l) = -(model_diff - ref_diff)`` (DPO's margin on the surrogate) and
    ``p = exp(n_w) / (exp(n_w) + exp(n_l))``, ``n = (score - score_min) / (score_max - score_min)``,
    from a reward score per image (``extras["chosen_score"]``, ``extras["rejected_score"]``, [B];
    PickScore in the official code, computed offline). As coded:
    ``inside = -0.5 * beta_dpo * (2p - 1) * 10 * (model_diff - ref_diff)``, so ``beta = 0.5 * beta_dpo``
    and ``gamma = 10``. Defaults: beta 2500 (``beta_dpo`` 5000, the SDXL launcher; SD1.5 uses 2000,
    beta 1000), ``score_min`` / ``score_max`` the PickScore range on Pick-a-Pic v2 hard-coded in the
    code (only their difference matters). The code orders each pair by PickScore, so ``p >= 0.5``;
    here the loss is unchanged when chosen and rejected are swapped together with their scores
    (``p -> 1 - p``, ``h -> -h``), so the scores decide the direction whatever the labels say.
    Equal scores give ``p = 0.5``: loss ``log 2`` and no gradient.
    [partial] The paper form ``-log sigmoid((2 alpha - gamma) beta h)`` (Eqs. 8-9, read only in a
    secondary review) matches the code with ``alpha = gamma * p`` (an inferred mapping). The ReNoise
    inversion that yields ``x_t`` is the scorer's business (``diffusion.x_t: renoise``), not this loss's.
    Source: Lu et al. 2025, arXiv 2506.02698; verified against the official JaydenLyh/SmPO ``train.py``.
    """
    _check_beta("smpo", beta)
    if not score_max > score_min:
        raise ValueError(f"smpo: score_max must be > score_min, got {score_min}, {score_max}")
    h = inputs.margin()
    p = smpo_preference(_extra(inputs, "smpo", "chosen_score").to(h.dtype),
                        _extra(inputs, "smpo", "rejected_score").to(h.dtype), score_min, score_max).detach()
    scale = beta * gamma * (2.0 * p - 1.0)
    loss = -F.logsigmoid(scale * h)
    metrics = pairwise_metrics(inputs, beta)
    metrics["smpo/preference"] = p.mean()
    return LossOutput(loss, metrics)


# ---- InPO -------------------------------------------------------------------------------------------
@register_loss(
    "inpo",
    family="diffusion",
    source="Lu et al. 2025, InPO: Inversion Preference Optimization with Reparametrized DDIM, "
    "arXiv 2503.18454 (CVPR 2025); official JaydenLyh/InPO train.py",
    needs=PAIRS_WITH_REFERENCE,
)
def inpo_loss(inputs: LossInputs, beta: float = 2500.0) -> LossOutput:
    """InPO (loss part): ``L = -log sigmoid(beta * h)``, Diffusion-DPO's loss on DDIM-inverted ``x_t``.

    As coded: ``inside = -0.5 * beta_dpo * (model_diff - ref_diff)``, ``loss = -logsigmoid(inside)``,
    so ``beta = 0.5 * beta_dpo``; the value equals ``dpo`` with the same ``beta``. What makes InPO
    InPO is how ``x_t`` and the noise target are obtained: DDIM inversion of ``x0`` with the current
    policy (10 inverse steps, ``inversion_eta`` 0.1 noise), ``eps_target = (x_t - sqrt(abar_t) x0) /
    sqrt(1 - abar_t)``. That is the scorer's business (``diffusion.x_t: ddim_inversion``,
    ``diffusion.inversion_eta: 0.1``); this loss only reads the surrogate fields.
    Default beta 2500 (``beta_dpo`` 5000, SDXL; SD1.5 from an SFT start uses 2000, beta 1000).
    [partial] Only the code was read: the paper's reparameterisation derivation is unverified.
    Source: Lu et al. 2025, arXiv 2503.18454; the loss verified against the official JaydenLyh/InPO
    ``train.py``.
    """
    _check_beta("inpo", beta)
    loss = -F.logsigmoid(beta * inputs.margin())
    return LossOutput(loss, pairwise_metrics(inputs, beta))


# ---- RankDPO (diffusion form) -------------------------------------------------------------------------
@register_loss(
    "diffusion_rankdpo",
    family="diffusion",
    source="Karthik et al. 2024, Scalable Ranked Preference Optimization for Text-to-Image Generation "
    "(RankDPO), arXiv 2410.18013, Algorithm 2 (read through an OCR copy)",
    needs=Needs(reference=True, data="lists"),
    verified="partial",
)
def diffusion_rankdpo_loss(inputs: LossInputs, beta: float = 2500.0, discount: str = "log2") -> LossOutput:
    """RankDPO on K images: ``L = -sum_{phi_i > phi_j} Delta_ij * log sigmoid(-beta * (s_i - s_j))``.

    ``s_i = e_pi(x_i) - e_ref(x_i) = -(lp_i - lr_i)`` on ``list_policy_logps`` / ``list_reference_logps``
    [B, K] (K images of one prompt, shared ``t`` and noise from the scorer); ``phi`` = ``list_scores``
    (the aggregated preference label, higher is better); ``Delta_ij = |2^phi_i - 2^phi_j| *
    |1/D(tau_i) - 1/D(tau_j)|`` with ``tau`` the 1-based rank by ``phi`` (tied images share their
    average rank; a tied pair is not a pair) and ``D(tau) = log2(1 + tau)`` (``discount="log2"``, the
    NDCG discount) or ``ln(1 + tau)`` (``"ln"``, the OCR'd text as written; a factor ``1/ln 2`` on the loss).
    With ``discount="log2"`` the value equals the listwise ``rankdpo`` (language-model form) with the
    same ``beta``; K = 2 is DPO weighted by ``Delta_12``. ``list_mask`` marks real images.
    [partial] Verification: PARTIAL. Algorithm 2 was read only through an OCR copy (its discount's ``1/`` restored); whether the
    noise is shared across the K images is not stated (the scorer shares it, as Diffusion-DPO does);
    ``beta`` has no published value (default 2500 = Diffusion-DPO's ``beta_dpo`` 5000, unverified).
    Source: Karthik et al. 2024, arXiv 2410.18013.
    """
    _check_beta("diffusion_rankdpo", beta)
    if discount not in ("log2", "ln"):
        raise ValueError(f"diffusion_rankdpo: discount must be 'log2' or 'ln', got {discount!r}")
    inputs.require("list_policy_logps", "list_reference_logps", "list_scores", "list_mask")
    mask = inputs.list_mask.bool()
    score = -(inputs.list_policy_logps - inputs.list_reference_logps)  # s_i, lower is better
    score = score.masked_fill(~mask, 0.0)
    phi = inputs.list_scores.to(torch.promote_types(inputs.list_scores.dtype, score.dtype)).masked_fill(~mask, 0.0)
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    above = both & (phi.unsqueeze(-1) > phi.unsqueeze(-2))  # [B, i, j]: i ranked above j
    greater = (both & (phi.unsqueeze(-2) > phi.unsqueeze(-1))).sum(-1)
    tied = (both & (phi.unsqueeze(-2) == phi.unsqueeze(-1))).sum(-1) - 1
    tau = (1.0 + greater + 0.5 * tied).to(phi.dtype).masked_fill(~mask, 1.0)
    log = torch.log2 if discount == "log2" else torch.log
    inv_d = 1.0 / log(1.0 + tau)
    gain = torch.exp2(phi)
    delta = ((gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (inv_d.unsqueeze(-1) - inv_d.unsqueeze(-2)).abs())
    pair = -F.logsigmoid(-beta * (score.unsqueeze(-1) - score.unsqueeze(-2)))
    loss = (delta.detach() * pair * above).sum((-1, -2))
    return LossOutput(loss, list_metrics(-beta * score, phi, mask, inputs))


# ---- DenseDPO (per-segment) ---------------------------------------------------------------------------
@register_loss(
    "dense_segment_dpo",
    family="diffusion",
    source="Wu et al. 2025, DenseDPO: Fine-Grained Temporal Preference Optimization for Video Diffusion "
    "Models, arXiv 2506.03517 (NeurIPS 2025); loss inferred (no official code)",
    needs=Needs(reference=True, data="pairs", extras=SEGMENT_EXTRAS),
    verified="partial",
)
def dense_segment_dpo_loss(inputs: LossInputs, beta: float = 2500.0, reduction: str = "mean") -> LossOutput:
    """Per-segment DPO: ``L = -(1/|F'|) sum_{f in F'} log sigmoid(beta * y_f * h_f)``.

    For two temporally aligned videos ``a`` (chosen slot) and ``b`` (rejected slot) scored on the same
    ``(x_t, t, eps)``, segment ``f`` (a set of latent frames) has its own surrogate
    ``lp^f(x) = -mean_{D in f} (eps_hat - target)^2``: ``extras["segment_policy_logps"]`` and
    ``extras["segment_reference_logps"]`` [B, 2, F] (index 0: ``a``, 1: ``b``), and a label per segment
    ``extras["segment_labels"]`` [B, F]: +1 ``a`` wins, -1 ``b`` wins, 0 tie or unlabelled (skipped).
    ``h_f = (lp_a^f - lr_a^f) - (lp_b^f - lr_b^f) = -(s^f(a) - s^f(b))``; ``F'`` = the labelled
    segments. ``reduction="mean"`` (default) averages over ``F'``, ``"sum"`` sums; an example with no
    labelled segment has loss 0. One segment labelled +1 is ``dpo``; a label -1 is ``dpo`` with
    ``a`` and ``b`` swapped.
    [partial] Verification: PARTIAL (UNVERIFIED loss). DenseDPO has no official code and its loss was not read; this shape is
    inferred from the paper's description (one preference per segment) and a review. Whether ties are
    dropped, mean or sum over segments, and ``beta`` (default 2500, as Diffusion-DPO) are unknown.
    Per-segment reduction of the error is the scorer's business (``dpokit.scoring.diffusion.segments``,
    from video records with ``segments`` and ``segment_labels``, ``dpokit.data.video``).
    Source: Wu et al. 2025, arXiv 2506.03517 (abstract, project page, review).
    """
    _check_beta("dense_segment_dpo", beta)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"dense_segment_dpo: reduction must be 'mean' or 'sum', got {reduction!r}")
    lp = _extra(inputs, "dense_segment_dpo", "segment_policy_logps")
    lr = _extra(inputs, "dense_segment_dpo", "segment_reference_logps")
    y = _extra(inputs, "dense_segment_dpo", "segment_labels").to(lp.dtype)
    if lp.dim() != 3 or lp.shape[1] != 2 or lr.shape != lp.shape or y.shape != (lp.shape[0], lp.shape[2]):
        raise ValueError("dense_segment_dpo: extras segment_policy_logps / segment_reference_logps must be "
                         f"[B, 2, F] and segment_labels [B, F]; got {tuple(lp.shape)}, {tuple(lr.shape)}, "
                         f"{tuple(y.shape)}")
    if bool(((y != 0) & (y.abs() != 1)).any()):
        raise ValueError("dense_segment_dpo: segment_labels must be +1 (a wins), -1 (b wins) or 0 (tie)")
    r = lp - lr  # [B, 2, F]
    h = r[:, 0] - r[:, 1]
    labelled = (y != 0).to(lp.dtype)
    per_segment = -F.logsigmoid(beta * y * h) * labelled
    loss = per_segment.sum(-1)
    if reduction == "mean":
        loss = loss / labelled.sum(-1).clamp_min(1.0)
    # headline metrics over labelled segments: reward of the segment winner vs the loser
    win = torch.where(y >= 0, r[:, 0], r[:, 1])
    lose = torch.where(y >= 0, r[:, 1], r[:, 0])
    keep = labelled.bool()
    if bool(keep.any()):
        metrics = reward_metrics(beta * win[keep], beta * lose[keep])
    else:
        zero = h.new_zeros(()).detach()
        metrics = {"rewards/chosen": zero, "rewards/rejected": zero, "rewards/margins": zero,
                   "rewards/accuracies": zero}
    metrics["segments/labelled"] = labelled.sum(-1).mean().detach()
    return LossOutput(loss, metrics)
