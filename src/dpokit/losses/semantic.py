"""Data-weighted pairwise losses whose weights come from an embedding model (computed on the data side)."""

from __future__ import annotations

import torch.nn.functional as F

from ._numerics import require_extra
from .base import LossInputs, LossOutput, pairwise_metrics
from .registry import Needs, register_loss


@register_loss(
    "sem_dpo",
    family="pairwise",
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
    unverified (PARTIAL in METHODS A20). Source: Mohamed et al. 2025, arXiv 2507.20133.
    """
    w = require_extra(inputs, "sem_weight", "sem_dpo").detach()
    h = inputs.margin()
    loss = -w.to(h.dtype) * F.logsigmoid(beta * h)
    metrics = pairwise_metrics(inputs, beta)
    metrics["sem_dpo/weight"] = w.mean()
    return LossOutput(loss, metrics)
