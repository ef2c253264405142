"""BideDPO: text and condition preferences of a conditional (ControlNet) diffusion model, decoupled.

Zhou et al. 2025, *BideDPO*, arXiv 2511.19268 (ICLR 2026). There is no official training code (the
repository's TODO marks it unreleased) and the paper body was not read: what is known (abstract,
project page, a summary) is that each sample gets **two disentangled preference pairs**, a *text pair*
(images that differ in text adherence under the same condition) and a *condition pair* (images that
differ in condition adherence), each scored with Diffusion-DPO with the prompt and the condition image
both fed to the model, and that an **adaptive loss balancing** weighs the two terms. The combination
``L = w_t L_DPO(text pair) + w_c L_DPO(condition pair)`` is inferred; the balancing rule is not known.

On the diffusion scorer's fields (``lp = -e_pi``, ``lr = -e_ref``; docs/losses/diffusion.md), a pair's
Diffusion-DPO term is ``l = -log sigmoid(beta * h)``, ``h = (lp_w - lr_w) - (lp_l - lr_l)``. Each pair
is one row of the batch, its kind in ``extras["bide_pair"]`` (0: text, 1: condition;
:mod:`dpokit.data.conditions` reads BideDPO records into such rows). Docs: ``docs/losses/bide.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput, pairwise_metrics
from .registry import Needs, register_loss

BALANCES = ("none", "loss_ratio")


@register_loss(
    "bide_dpo",
    family="bide",
    source="Zhou et al. 2025, BideDPO, arXiv 2511.19268 (ICLR 2026); abstract and project page only, no "
    "official code: the weighted sum is inferred and the balancing rule unknown",
    needs=Needs(reference=True, data="pairs", extras=("bide_pair",)),
    verified="partial",
)
def bide_dpo_loss(inputs: LossInputs, beta: float = 2500.0, text_weight: float = 1.0,
                  condition_weight: float = 1.0, balance: str = "none") -> LossOutput:
    """BideDPO: ``L = w_t * L_t + w_c * L_c``, Diffusion-DPO on the text pairs and on the condition pairs.

    ``L_k = mean_{i of kind k} -log sigmoid(beta * h_i)`` over the batch's rows of kind ``k``
    (``extras["bide_pair"]``: 0 text pair, 1 condition pair), ``h`` DPO's margin on the diffusion
    surrogate. The per-row loss is ``w_{k_i} * (B / n_{k_i}) * l_i``, so that its batch mean is
    ``sum_k w_k L_k`` whatever the mix of kinds in the batch; a kind absent from the batch adds 0.
    ``balance="none"``: ``w_t = text_weight``, ``w_c = condition_weight``.
    ``balance="loss_ratio"``: ``w_k = weight_k * K * sg(L_k) / sum_j sg(L_j)`` over the K kinds present
    (no gradient through the weights; equal losses give the fixed weights; the kind whose loss is
    higher weighs more).
    Identities: a batch of text pairs only (or ``condition_weight = 0`` on the text rows) is ``dpo``
    with the same ``beta`` times ``text_weight``; swapping the two kinds with their weights leaves the
    loss unchanged. Default ``beta`` 2500 (= Diffusion-DPO's ``beta_dpo`` 5000; no BideDPO value known).
    [partial] Verification: PARTIAL (UNVERIFIED loss). BideDPO has no official code and its equations
    were not read: the weighted sum of two Diffusion-DPO terms follows the abstract's "two disentangled
    preference pairs" and is inferred; "Adaptive Loss Balancing" is named but its rule is unknown, so
    ``loss_ratio`` is one plausible rule (stop-gradient loss-ratio weights), not the paper's; ``beta`` is
    unknown. The self-driven data pipeline (sampling, VLM checks, iterative rounds) is not part of it.
    Source: Zhou et al. 2025, arXiv 2511.19268 (abstract, project page, summary).
    """
    if not beta > 0:
        raise ValueError(f"bide_dpo: beta must be > 0, got {beta}")
    if balance not in BALANCES:
        raise ValueError(f"bide_dpo: balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    if text_weight < 0 or condition_weight < 0:
        raise ValueError(f"bide_dpo: weights must be >= 0, got {text_weight}, {condition_weight}")
    kind = inputs.extras.get("bide_pair")
    if kind is None:
        raise ValueError("bide_dpo: this loss needs LossInputs.extras['bide_pair'] (0: text pair, 1: condition "
                         "pair), which BideDPO records (text_pair / condition_pair) give")
    h = inputs.margin()
    kind = kind.to(h.device)
    if bool(((kind != 0) & (kind != 1)).any()):
        raise ValueError("bide_dpo: extras['bide_pair'] must be 0 (text pair) or 1 (condition pair)")
    per_pair = -F.logsigmoid(beta * h)
    masks = [(kind == 0).to(h.dtype), (kind == 1).to(h.dtype)]
    counts = [m.sum() for m in masks]
    means = [(per_pair.detach() * m).sum() / c.clamp_min(1.0) for m, c in zip(masks, counts)]
    weights = [torch.as_tensor(float(text_weight), dtype=h.dtype, device=h.device),
               torch.as_tensor(float(condition_weight), dtype=h.dtype, device=h.device)]
    if balance == "loss_ratio":
        present = [float(c > 0) for c in counts]
        total = sum(p * m for p, m in zip(present, means))
        if float(total) > 0:
            weights = [w * sum(present) * m / total if p else w for w, m, p in zip(weights, means, present)]
    size = float(h.shape[0])
    row_weight = sum(w * size / c.clamp_min(1.0) * m for w, c, m in zip(weights, counts, masks))
    loss = row_weight * per_pair
    metrics = pairwise_metrics(inputs, beta)
    for name, m, c, w in zip(("text", "condition"), masks, counts, weights):
        metrics[f"bide/{name}_loss"] = ((per_pair * m).sum() / c.clamp_min(1.0)).detach()
        metrics[f"bide/{name}_weight"] = w.detach()
        metrics[f"bide/{name}_accuracy"] = (((h > 0).to(h.dtype) * m).sum() / c.clamp_min(1.0)).detach()
    return LossOutput(loss, metrics)
