"""Token-level losses: TDPO, token-weighted DPO, TAB-PO.

Per-token tensors are [B, T], padded to the longest completion with completion token ``t`` at
position ``t`` (``LossInputs`` convention), zero outside ``*_token_mask``. Token statistics come
from the engine in ``inputs.token_stats`` keyed ``"chosen/<stat>"`` / ``"rejected/<stat>"``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._numerics import masked_sum, optional_extra, require_extra
from .base import LossInputs, LossOutput, reward_metrics
from .registry import Needs, register_loss

Tensor = torch.Tensor

TOKEN_WEIGHT_KEYS = ("chosen_token_weights", "rejected_token_weights")


def _token_tensors(inputs: LossInputs, which: str, reference: bool = True):
    names = [f"policy_{which}_token_logps", f"{which}_token_mask"]
    if reference:
        names.append(f"reference_{which}_token_logps")
    inputs.require(*names)
    lp = getattr(inputs, f"policy_{which}_token_logps")
    mask = getattr(inputs, f"{which}_token_mask").to(torch.bool)
    lr = getattr(inputs, f"reference_{which}_token_logps") if reference else None
    return lp, lr, mask


def _token_stat(inputs: LossInputs, key: str, loss: str) -> Tensor:
    value = inputs.token_stats.get(key) if inputs.token_stats else None
    if value is None:
        raise ValueError(f"{loss} needs LossInputs.token_stats[{key!r}] but it was not provided")
    return value


# ------------------------------------------------------------------------------------------------
@register_loss(
    "tdpo",
    family="token_level",
    source="Zeng et al. 2024, Token-level Direct Preference Optimization, arXiv 2404.11999; official "
    "Vance0124/Token-level-Direct-Preference-Optimization trainers.py tdpo_loss",
    needs=Needs(reference=True, data="pairs", token_stats=("ref_kl",)),
)
def tdpo_loss(inputs: LossInputs, beta: float = 0.1, alpha: float = 0.5, tdpo2: bool = False) -> LossOutput:
    """TDPO: DPO with the sequential KL(ref || policy) of each response in the margin.

    ``KL(y) = sum_t KL(pi_ref(.|x,y_<t) || pi_theta(.|x,y_<t))`` from ``token_stats["chosen/ref_kl"]`` and
    ``["rejected/ref_kl"]`` ([B, T], zero outside the mask), ``u = r(y_w) - r(y_l)``:

    * TDPO1 (``tdpo2=False``, the official config default): ``L = -logsig(beta (u - (KL(y_l) - KL(y_w))))``
    * TDPO2 (``tdpo2=True``): ``L = -logsig(beta (u - alpha (KL(y_l) - sg(KL(y_w)))))``

    Defaults ``beta`` 0.1, ``alpha`` 0.5 (official ``config/loss/tdpo.yaml``). Rewards logged as in the
    official code: ``beta (r(y) + KL(y))``. With identical policy and reference the KL terms vanish and
    this is DPO. Source: Zeng et al. 2024, arXiv 2404.11999.
    """
    kl_w = _token_stat(inputs, "chosen/ref_kl", "tdpo")
    kl_l = _token_stat(inputs, "rejected/ref_kl", "tdpo")
    if inputs.chosen_token_mask is not None:
        kl_w = masked_sum(kl_w, inputs.chosen_token_mask)
        kl_l = masked_sum(kl_l, inputs.rejected_token_mask)
    else:
        kl_w, kl_l = kl_w.sum(-1), kl_l.sum(-1)
    r_w, r_l = inputs.chosen_logratios(), inputs.rejected_logratios()
    if tdpo2:
        logits = (r_w - r_l) - alpha * (kl_l - kl_w.detach())
    else:
        logits = (r_w - r_l) - (kl_l - kl_w)
    loss = -F.logsigmoid(beta * logits)
    metrics = reward_metrics(beta * (r_w + kl_w), beta * (r_l + kl_l), inputs)
    metrics["kl/chosen"] = kl_w.detach().mean()
    metrics["kl/rejected"] = kl_l.detach().mean()
    return LossOutput(loss, metrics)


# ------------------------------------------------------------------------------------------------
@register_loss(
    "token_dpo",
    family="token_level",
    source="dpokit generic token-weighted DPO (the weighted-sum form used by token-importance methods "
    "such as TIS-DPO, and TAB-PO v1, arXiv 2603.00025); reduces to DPO, "
    "Rafailov et al. 2023, with unit weights",
    needs=Needs(reference=True, data="pairs", token_logps=True, extras=TOKEN_WEIGHT_KEYS),
    verified="partial",
)
def token_dpo_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """Token-weighted DPO: ``L = -logsig(beta [sum_t w^w_t (lp^w_t - lr^w_t) - sum_t w^l_t (lp^l_t - lr^l_t)])``.

    Per-token weights ``w`` [B, T] come from ``extras["chosen_token_weights"]`` and
    ``extras["rejected_token_weights"]`` (required); how they are estimated (token importance,
    field types, diff tokens) is the data's business. All weights 1 gives DPO exactly.
    Verification: PARTIAL. The objective is a generic construction; it is not shipped as any one
    paper's loss (TIS-DPO's weight estimation, for example, is not implemented or verified here).
    Source: dpokit; DPO, Rafailov et al. 2023, arXiv 2305.18290.
    """
    lp_w, lr_w, m_w = _token_tensors(inputs, "chosen")
    lp_l, lr_l, m_l = _token_tensors(inputs, "rejected")
    w_w = require_extra(inputs, "chosen_token_weights", "token_dpo").to(lp_w.dtype)
    w_l = require_extra(inputs, "rejected_token_weights", "token_dpo").to(lp_l.dtype)
    r_w = masked_sum(w_w * (lp_w - lr_w), m_w)
    r_l = masked_sum(w_l * (lp_l - lr_l), m_l)
    loss = -F.logsigmoid(beta * (r_w - r_l))
    return LossOutput(loss, reward_metrics(beta * r_w, beta * r_l, inputs))


# ------------------------------------------------------------------------------------------------
def _normalized_weights(weights: Optional[Tensor], mask: Tensor, dtype, normalize: bool) -> Tensor:
    m = mask.to(dtype)
    w = torch.ones_like(m) if weights is None else weights.to(dtype)
    w = w * m
    if normalize:
        n = m.sum(-1, keepdim=True)
        w = w * n.clamp_min(1) / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return w


def diff_token_weights(
    chosen_ids: Tensor,
    rejected_ids: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    multiplier: float = 1.2,
    chosen_weights: Optional[Tensor] = None,
    rejected_weights: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """TAB-PO's diff-token rule: multiply the weight of the ``k``-th completion token on BOTH sides by
    ``multiplier`` where the chosen and rejected completions differ at position ``k``
    (``k < min(|y_w|, |y_l|)``; official ``weight_diff_tokens`` = 1.2).

    Inputs are [B, T_w] / [B, T_l] completion token ids and masks (completion token ``k`` at
    position ``k``); optional starting weights (e.g. field-type weights) default to 1 on the mask.
    Returns un-normalised weights; ``tab_po`` renormalises them to mean 1 per sequence.
    """
    dtype = torch.float32 if chosen_weights is None else chosen_weights.dtype
    w_w = torch.ones(chosen_ids.shape, dtype=dtype) if chosen_weights is None else chosen_weights.clone()
    w_l = torch.ones(rejected_ids.shape, dtype=dtype) if rejected_weights is None else rejected_weights.clone()
    w_w = w_w.to(chosen_ids.device) * chosen_mask.to(dtype)
    w_l = w_l.to(rejected_ids.device) * rejected_mask.to(dtype)
    t = min(chosen_ids.shape[1], rejected_ids.shape[1])
    both = chosen_mask[:, :t].bool() & rejected_mask[:, :t].bool()
    differ = both & (chosen_ids[:, :t] != rejected_ids[:, :t])
    factor = torch.where(differ, torch.full_like(w_w[:, :t], multiplier), torch.ones_like(w_w[:, :t]))
    w_w = torch.cat([w_w[:, :t] * factor, w_w[:, t:]], dim=1)
    w_l = torch.cat([w_l[:, :t] * factor.to(w_l.dtype), w_l[:, t:]], dim=1)
    return w_w, w_l


@register_loss(
    "tab_po",
    family="token_level",
    source="Fodeh, Ma et al. 2026, TAB-PO: Preference Optimization with a Token-Level Adaptive Barrier "
    "for Token-Critical Structured Generation, arXiv 2603.00025; official SarielMa/TAB-PO train_dpo.py",
    needs=Needs(reference=True, data="pairs", token_logps=True, extras=TOKEN_WEIGHT_KEYS),
)
def tab_po_loss(
    inputs: LossInputs,
    beta: float = 0.5,
    tau: float = 0.66,
    lam: float = 0.5,
    aggregation: str = "weighted_mean",
    normalize_weights: bool = True,
) -> LossOutput:
    """TAB-PO: token-weighted DPO on weighted mean log-probs plus a gated barrier on chosen tokens.

    With per-token weights ``w`` (``extras["chosen_token_weights"]``/``["rejected_token_weights"]``,
    default 1; renormalised to mean 1 over each sequence's tokens when ``normalize_weights``):

    * ``s(y) = (1/n) sum_t w_t lp_t``, same for the reference; ``z = (s_w - s_l) - (s_ref_w - s_ref_l)``
    * ``L_pref = -logsig(beta z)``
    * gate ``g_t = 1[lp^w_t < log tau]`` (hard, no gradient) on chosen tokens only;
      ``B = sum_t w_t g_t (-lp^w_t) / max(1, sum_t w_t g_t)``
    * ``L = L_pref + lam * B``

    ``aggregation="sum"`` gives the paper-v2 form (from a secondary summary, not verified against the
    PDF): plain summed log-probs without weights and an unweighted barrier average.
    Defaults (official ``Config``): ``beta`` 0.5, ``tau`` 0.66, ``lam`` 0.5; official token weights
    1.1/1.2/1.1 by JSON field type and a diff-token multiplier 1.2 (see :func:`diff_token_weights`).
    The official reference is the same LoRA model with the adapter disabled (the SFT model).
    Source: official code ``SarielMa/TAB-PO``, arXiv 2603.00025.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tab_po: tau must be in (0, 1], got {tau}")
    lp_w, lr_w, m_w = _token_tensors(inputs, "chosen")
    lp_l, lr_l, m_l = _token_tensors(inputs, "rejected")
    if aggregation == "weighted_mean":
        w_w = _normalized_weights(optional_extra(inputs, "chosen_token_weights"), m_w, lp_w.dtype, normalize_weights)
        w_l = _normalized_weights(optional_extra(inputs, "rejected_token_weights"), m_l, lp_l.dtype, normalize_weights)
        n_w = m_w.to(lp_w.dtype).sum(-1).clamp_min(1)
        n_l = m_l.to(lp_l.dtype).sum(-1).clamp_min(1)
        s_w, s_l = masked_sum(w_w * lp_w, m_w) / n_w, masked_sum(w_l * lp_l, m_l) / n_l
        sr_w, sr_l = masked_sum(w_w * lr_w, m_w) / n_w, masked_sum(w_l * lr_l, m_l) / n_l
        barrier_w = w_w
    elif aggregation == "sum":
        s_w, s_l = masked_sum(lp_w, m_w), masked_sum(lp_l, m_l)
        sr_w, sr_l = masked_sum(lr_w, m_w), masked_sum(lr_l, m_l)
        barrier_w = m_w.to(lp_w.dtype)
    else:
        raise ValueError(f"tab_po: aggregation must be 'weighted_mean' or 'sum', got {aggregation!r}")
    z = (s_w - s_l) - (sr_w - sr_l)
    pref = -F.logsigmoid(beta * z)
    gate = ((lp_w.detach() < math.log(tau)) & m_w).to(lp_w.dtype)
    gw = barrier_w * gate
    barrier = (gw * -lp_w).sum(-1) / gw.sum(-1).clamp_min(1.0)
    loss = pref + lam * barrier
    metrics = reward_metrics(beta * (s_w - sr_w), beta * (s_l - sr_l), inputs)
    metrics["tab_po/barrier"] = barrier.detach().mean()
    metrics["tab_po/gated_fraction"] = (gate.sum() / m_w.to(gate.dtype).sum().clamp_min(1)).detach()
    return LossOutput(loss, metrics)
