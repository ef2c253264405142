"""PhyGDPO: groupwise Plackett-Luce preference optimisation with physics-guided weights (diffusion).

A group holds one winner (the real video in the paper; here the first sample of a ranked list)
and G generated samples with a physics score each (``list_scores``, higher is more physical), all
scored by the diffusion scorer on a shared ``(t, eps)``: ``r_i = beta * (lp_i - lr_i) = -beta * s_i``
with ``s_i = e_pi(x_i) - e_ref(x_i)``. The reference is the LoRA-switch reference (the denoiser
with its LoRA off: ``lora.enabled`` with ``reference.kind: lora_disabled``, or ``auto``).
Docs: ``docs/losses/phygdpo.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput
from .listwise import list_metrics
from .registry import Needs, register_loss

Tensor = torch.Tensor

GUIDANCE = ("none", "inside", "outside")
RANKS = ("winner_first", "full")


def physics_weights(scores: Tensor, losers: Tensor, temperature: float) -> Tensor:
    """``w_j = g_j / mean_{losers} g``, ``g_j = exp(-score_j / temperature)`` over the losers of a
    group (mean 1 within the group; lower physics score, larger weight); 0 off the losers."""
    logits = torch.where(losers, -scores / temperature, torch.full_like(scores, -torch.inf))
    share = torch.softmax(logits, dim=-1)
    return (share * losers.sum(-1, keepdim=True).to(share.dtype)).masked_fill(~losers, 0.0)


def _full_ranking_loss(rewards: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """``-sum_k log(e^{r_(k)} / sum_{m >= k} e^{r_(m)})`` over the members sorted by score (winner first)."""
    key = torch.where(mask, scores, torch.full_like(scores, -torch.inf))
    key[..., 0] = torch.inf  # the winner is ranked first whatever its score
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    r = torch.gather(rewards, -1, order)
    m = torch.gather(mask, -1, order)
    r = r.masked_fill(~m, -torch.inf)
    tail = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)  # log sum_{m >= k} e^{r_(m)}
    terms = torch.where(m, tail - r, torch.zeros_like(r))
    last = m.sum(-1, keepdim=True) - 1  # the last member's term is log 1 = 0
    return terms.sum(-1) - torch.gather(terms, -1, last).squeeze(-1)


@register_loss(
    "phygdpo",
    family="phygdpo",
    source="Cai et al. 2025, PhyGDPO: physics-aware groupwise direct preference optimisation for video "
    "generation, arXiv 2512.24551 (abstract and reviews; no official code); Plackett-Luce DPO: "
    "Rafailov et al. 2023, arXiv 2305.18290, App. A.3",
    needs=Needs(reference=True, data="lists"),
    verified="partial",
)
def phygdpo_loss(inputs: LossInputs, beta: float = 2500.0, guidance: str = "inside", temperature: float = 1.0,
                 rank: str = "winner_first") -> LossOutput:
    """PhyGDPO: ``L = -log( e^{r_w} / (e^{r_w} + sum_j w_j e^{r_j}) ) = softplus(logsumexp_j (log w_j + r_j - r_w))``.

    Group ``[w, l_1..l_G]`` = ``list_policy_logps`` / ``list_reference_logps`` [B, K] (K = G + 1,
    winner at position 0, ``list_mask`` marks real members), ``r_i = beta * ((lp_i - lr_i))`` (the
    diffusion scorer's surrogate: ``-beta * s_i``), physics scores ``list_scores`` (the winner's is
    not read with ``rank="winner_first"``). Physics-guided rewarding (``guidance``):

    * ``"inside"`` (default): per-loser weights ``w_j = g_j / mean_j g_j``, ``g_j = exp(-score_j /
      temperature)``, inside the Plackett-Luce denominator (a less physical sample pushes harder);
    * ``"outside"``: ``w_j = 1`` inside, and the group's loss multiplied by ``omega_b = B *
      softmax_b(-mean_j score_bj / temperature)`` (groups whose generated samples are less physical,
      the challenging cases, weigh more; mean 1 over the batch);
    * ``"none"``: the plain grouped Plackett-Luce loss (winner ranked above the whole group).

    Weights are detached. ``rank="full"`` replaces the winner-first term by the full Plackett-Luce
    ranking of the group (winner first, then the losers by descending score):
    ``-sum_k log(e^{r_(k)} / sum_{m >= k} e^{r_(m)})`` (with ``guidance`` ``"none"`` or ``"outside"``).
    Identities: K = 2 with guidance ``"inside"`` or ``"none"`` is ``dpo`` with the same beta (one
    loser has weight 1), and so is ``"outside"`` when every group's loser score is the same (then
    ``omega_b = 1``; otherwise it is a per-group weighted ``dpo``); the full ranking with K = 2 is the same.
    [partial] UNVERIFIED against the paper: PhyGDPO has no released code and its equations were not
    read (only the abstract and reviews: a real-video winner, generated losers, a single-timestep
    Plackett-Luce bound, VLM physics rewards that "direct the optimization to focus on challenging
    physics cases", the LoRA-switch reference). The form of the weights (``g`` and where it
    enters) is an inferred design offered as options, not the paper's; ``beta`` has no published
    value (default 2500 = Diffusion-DPO's ``beta_dpo`` 5000).
    Source: Cai et al. 2025, arXiv 2512.24551.
    """
    if not beta > 0:
        raise ValueError(f"phygdpo: beta must be > 0, got {beta}")
    if guidance not in GUIDANCE:
        raise ValueError(f"phygdpo: guidance must be one of {', '.join(GUIDANCE)}, got {guidance!r}")
    if rank not in RANKS:
        raise ValueError(f"phygdpo: rank must be one of {', '.join(RANKS)}, got {rank!r}")
    if rank == "full" and guidance == "inside":
        raise ValueError("phygdpo: rank 'full' takes guidance 'none' or 'outside' (per-loser weights are defined "
                         "for the winner-first term)")
    if not temperature > 0:
        raise ValueError(f"phygdpo: temperature must be > 0, got {temperature}")
    inputs.require("list_policy_logps", "list_reference_logps", "list_mask")
    mask = inputs.list_mask.bool()
    if bool((mask.sum(-1) < 2).any()) or not bool(mask[:, 0].all()):
        raise ValueError("phygdpo: every group needs its winner at position 0 and at least one loser")
    rewards = beta * (inputs.list_policy_logps - inputs.list_reference_logps)
    scores = inputs.list_scores
    if scores is None and guidance != "none" or scores is None and rank == "full":
        raise ValueError("phygdpo: guidance and rank 'full' read the physics scores (list_scores); give each group "
                         "its scores or use guidance 'none'")
    scores = torch.zeros_like(rewards) if scores is None else scores.to(rewards.dtype)
    losers = mask.clone()
    losers[:, 0] = False
    if rank == "full":
        loss = _full_ranking_loss(rewards, scores, mask)
    else:
        log_w = torch.zeros_like(rewards)
        if guidance == "inside":
            log_w = physics_weights(scores, losers, temperature).detach().clamp_min(1e-30).log()
        gaps = torch.where(losers, log_w + rewards - rewards[:, :1], torch.full_like(rewards, -torch.inf))
        loss = F.softplus(torch.logsumexp(gaps, dim=-1))
    if guidance == "outside":
        mean_score = (scores * losers).sum(-1) / losers.sum(-1)
        omega = torch.softmax(-mean_score / temperature, dim=0) * rewards.shape[0]
        loss = loss * omega.detach()
    order = torch.where(losers, scores, torch.full_like(scores, -torch.inf))
    order = torch.where(mask & ~losers, torch.full_like(scores, torch.inf), order)  # the winner ranks first
    ranking = torch.argsort(torch.argsort(order, dim=-1), dim=-1).to(rewards.dtype)
    metrics = list_metrics(rewards, ranking, mask, inputs)
    return LossOutput(loss, metrics)
