"""Pairwise losses that weigh the preference against other objectives: MODPO and Sem-DPO.

MODPO subtracts other objectives' reward-model scores from the implicit reward; Sem-DPO weighs each
pair by the semantic closeness of the chosen response to its prompt. Both read the other objective
from per-example data (``LossInputs.extras``), computed outside the loss. Notation:
``docs/losses/notation.md``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._numerics import require_extra
from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .registry import Needs, register_loss


@register_loss(
    "modpo",
    family="multi_objective",
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
    metrics = reward_metrics(big_r_w, big_r_l, inputs)
    return LossOutput(loss, metrics)


@register_loss(
    "sem_dpo",
    family="multi_objective",
    source="Mohamed et al. 2025, Sem-DPO, arXiv 2507.20133 (from secondary summaries; paper not read)",
    needs=Needs(reference=True, data="pairs", extras=("sem_weight",)),
    verified="partial",
)
def sem_dpo_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput:
    """Sem-DPO: ``L = -W * logsig(beta * h)``, ``W = exp(-alpha * d_cos(e(x), e(y_w)))``.

    ``W`` [B] comes from ``extras["sem_weight"]`` (no gradient): set ``data.sem_alpha`` to compute it
    with the offline hashed n-gram embedder, or call ``dpokit.data.build.semantic_weights`` with any
    ``Embedder`` (``embed(texts) -> [N, D]``). Pairs whose chosen response drifts semantically from
    the prompt weigh less. The paper's default ``alpha`` and any batch normalisation of ``W`` are
    unverified (PARTIAL). Source: Mohamed et al. 2025, arXiv 2507.20133.
    """
    w = require_extra(inputs, "sem_weight", "sem_dpo").detach()
    h = inputs.margin()
    loss = -w.to(h.dtype) * F.logsigmoid(beta * h)
    metrics = pairwise_metrics(inputs, beta)
    metrics["sem_dpo/weight"] = w.mean()
    return LossOutput(loss, metrics)
