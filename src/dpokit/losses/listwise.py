"""Listwise losses: K responses per prompt with scores (``data.kind: lists``).

Inputs (all [B, K], K = most responses of a list in the batch): ``list_policy_logps`` and
``list_reference_logps`` (sequence sums), ``list_lengths`` (completion tokens), ``list_scores``
(higher is better; ranks r arrive as scores -r) and ``list_mask`` (True on real responses; lists
with fewer responses are padded, and padded entries never change a value or a gradient).
Notation (``docs/losses/notation.md``): ``r_k = lp(y_k) - lr(y_k)``, ``t_k`` the given score of response k,
``N`` the number of real responses of a list. Every loss returns a per-list loss [B].

Ties (equal ``t``) are allowed; each docstring says how its loss treats them. A summary:

==============  =============================================================  ================
loss            tied responses                                                 all-tied list
==============  =============================================================  ================
plackett_luce   ``separate``: neither must beat the other (default);           0 (separate)
                ``breslow``: tied responses share the denominator;
                ``order``: broken by position in the list
lipo_lambda     a tied pair is not a pair (``|G_i - G_j| = 0``)                0
rankdpo         a tied pair is not a pair; tied responses share their rank     0
irpo            tied responses share their (average) rank                      > 0 (by formula)
adpo            equal target probability                                       uniform target
infonca         equal target probability                                       uniform target
nca_list        equal target probability                                       uniform target
exo_list        equal target probability                                       uniform target
tpo_list        a tied pair contributes nothing                                0
==============  =============================================================  ================
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput
from .registry import Needs, register_loss

Tensor = torch.Tensor

LISTS_WITH_REFERENCE = Needs(reference=True, data="lists")
_TIES = ("separate", "breslow", "order")


def _list_inputs(inputs: LossInputs, scores: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """``(r, t, mask)``: log-ratios [B, K] (0 on padding), scores [B, K], bool mask [B, K]."""
    inputs.require("list_policy_logps", "list_reference_logps", "list_mask")
    if scores:
        inputs.require("list_scores")
    mask = inputs.list_mask.bool()
    r = (inputs.list_policy_logps - inputs.list_reference_logps).masked_fill(~mask, 0.0)
    if not scores:
        return r, None, mask
    # scores keep at least float32 (a bf16 cast could merge close scores into ties)
    t = inputs.list_scores.to(torch.promote_types(inputs.list_scores.dtype, r.dtype)).masked_fill(~mask, 0.0)
    return r, t, mask


def _masked_logsumexp(values: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    return torch.logsumexp(values.masked_fill(~keep, float("-inf")), dim=dim)


def _masked_softmax(values: Tensor, mask: Tensor) -> Tensor:
    return torch.softmax(values.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)


def _masked_log_softmax(values: Tensor, mask: Tensor) -> Tensor:
    """log-softmax over real entries; 0 (not -inf) on padding so that ``0 * value`` stays 0."""
    return torch.log_softmax(values.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)


def _ordered_pairs(t: Tensor, mask: Tensor) -> Tensor:
    """[B, K, K] bool: both real and ``t_i > t_j`` (i strictly preferred to j)."""
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return both & (t.unsqueeze(-1) > t.unsqueeze(-2))


def _average_ranks(t: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of each real response by ``t`` (descending); tied responses share the average
    of the positions they occupy. Padding gets rank K+1 (never used)."""
    real_j = mask.unsqueeze(-2)
    greater = (real_j & (t.unsqueeze(-2) > t.unsqueeze(-1))).sum(-1)
    ties = (real_j & (t.unsqueeze(-2) == t.unsqueeze(-1))).sum(-1) - 1
    ranks = 1.0 + greater.to(t.dtype) + 0.5 * ties.to(t.dtype)
    return ranks.masked_fill(~mask, t.shape[-1] + 1.0)


def _model_ranks(s: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of each real response by the model's score ``s`` (descending), ties broken by
    position; no gradient."""
    s = s.detach()
    k = s.shape[-1]
    idx = torch.arange(k, device=s.device)
    real_j = mask.unsqueeze(-2)
    s_i, s_j = s.unsqueeze(-1), s.unsqueeze(-2)
    before = (s_j > s_i) | ((s_j == s_i) & (idx.view(1, 1, k) < idx.view(1, k, 1)))
    ranks = 1.0 + (real_j & before).sum(-1).to(s.dtype)
    return ranks.masked_fill(~mask, k + 1.0)


def _lambda_weights(t: Tensor, ranks: Tensor) -> Tensor:
    """LambdaLoss weights ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``, ``G = 2^t - 1``,
    ``D(tau) = log2(1 + tau)`` (the NDCG discount), [B, K, K], no gradient."""
    gains = torch.exp2(t.detach()) - 1.0
    inv_discount = 1.0 / torch.log2(1.0 + ranks.detach())
    return (gains.unsqueeze(-1) - gains.unsqueeze(-2)).abs() * (
        inv_discount.unsqueeze(-1) - inv_discount.unsqueeze(-2)).abs()


def list_metrics(rewards: Tensor, t: Tensor, mask: Tensor, inputs: LossInputs) -> Dict[str, Tensor]:
    """Headline metrics for lists: ``rewards/chosen`` (rejected) = mean reward of the best (worst)
    scored responses, ``rewards/margins`` their difference, ``rewards/accuracies`` = share of strictly
    ordered pairs the rewards order the same way; ``logps/chosen`` / ``logps/rejected`` likewise."""
    rewards, t = rewards.detach(), t.detach()
    inf = torch.tensor(float("inf"), dtype=t.dtype, device=t.device)
    best = mask & (t == torch.where(mask, t, -inf).amax(-1, keepdim=True))
    worst = mask & (t == torch.where(mask, t, inf).amin(-1, keepdim=True))

    def mean_of(values: Tensor, which: Tensor) -> Tensor:
        return ((values * which).sum(-1) / which.sum(-1).clamp_min(1)).mean()

    pairs = _ordered_pairs(t, mask)
    right = pairs & (rewards.unsqueeze(-1) > rewards.unsqueeze(-2))
    chosen, rejected = mean_of(rewards, best), mean_of(rewards, worst)
    logps = inputs.list_policy_logps.detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": right.sum().to(rewards.dtype) / pairs.sum().clamp_min(1).to(rewards.dtype),
        "logps/chosen": mean_of(logps, best),
        "logps/rejected": mean_of(logps, worst),
    }


# ------------------------------------------------------------------------------------------------
@register_loss(
    "plackett_luce",
    family="listwise",
    source="Rafailov et al. 2023, Direct Preference Optimization, arXiv 2305.18290, App. A.3 "
    "(Plackett-Luce ranking model; LiPO's DPO-PL); tie handling: dpokit (separate/order) and the "
    "Breslow approximation (breslow)",
    needs=LISTS_WITH_REFERENCE,
    aliases=("pl_dpo",),
    verified="partial",
)
def plackett_luce_loss(inputs: LossInputs, beta: float = 0.1, ties: str = "separate") -> LossOutput:
    """Plackett-Luce DPO: ``L = -sum_k [s_k - logsumexp_{j in D_k} s_j]``, ``s = beta * r``.

    Without ties, sorting by score ``tau(1) > ... > tau(N)`` gives ``D_k`` = the responses ranked at or
    below ``k`` and the paper's ``L = -sum_k [s_tau(k) - logsumexp_{j >= k} s_tau(j)]``; K = 2 is DPO.
    Ties (``ties``):

    * ``"separate"`` (default): ``D_k = {k} ∪ {j : t_j < t_k}``; tied responses do not compete, each
      must beat everything scored strictly below it. An all-tied list gives 0.
    * ``"breslow"``: ``D_k = {j : t_j <= t_k}``; tied responses share one denominator (the Breslow
      approximation of the tied Plackett-Luce likelihood); pulls tied rewards together.
    * ``"order"``: ties broken by position in the list (a strict order; not permutation invariant).

    Source: DPO paper App. A.3 (PARTIAL: the standard formula, not re-read).
    """
    if ties not in _TIES:
        raise ValueError(f"plackett_luce: ties must be one of {_TIES}, got {ties!r}")
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    k = s.shape[-1]
    t_i, t_j = t.unsqueeze(-1), t.unsqueeze(-2)
    eye = torch.eye(k, dtype=torch.bool, device=s.device).unsqueeze(0)
    if ties == "separate":
        below = t_j < t_i
    elif ties == "breslow":
        below = t_j <= t_i
    else:
        idx = torch.arange(k, device=s.device)
        below = (t_j < t_i) | ((t_j == t_i) & (idx.view(1, 1, k) > idx.view(1, k, 1)))
    denominators = eye | (mask.unsqueeze(-2) & below)
    lse = _masked_logsumexp(s.unsqueeze(-2).expand(-1, k, -1), denominators)
    loss = -((s - lse) * mask).sum(-1)
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "lipo_lambda",
    family="listwise",
    source="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank, "
    "arXiv 2402.01878 (LiPO-lambda); LambdaLoss weights (Wang et al. 2018)",
    needs=LISTS_WITH_REFERENCE,
    aliases=("lipo",),
    verified="partial",
)
def lipo_lambda_loss(inputs: LossInputs, beta: float = 0.05) -> LossOutput:
    """LiPO-lambda: ``L = sum_{t_i > t_j} Delta_ij * -logsig(s_i - s_j)``, ``s = beta * r``.

    ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|`` (no gradient), ``G = 2^t - 1`` with the given
    scores ``t`` as labels ``psi`` (the paper uses win rates in [0, 1]; keep scores on a small scale),
    ``tau`` = rank under the current model scores ``s`` (ties by position), ``D(tau) = log2(1 + tau)``
    (the NDCG discount; the paper writes ``log`` without a base: another base rescales the loss).
    Ties in ``t`` give no pair. K = 2 is ``(1 - 1/log2 3) * |G_1 - G_2|`` times DPO.
    Defaults: beta 0.05 (paper). Source: Liu et al. 2024 (PARTIAL: from a secondary report).
    """
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    delta = _lambda_weights(t, _model_ranks(s, mask))
    pairs = _ordered_pairs(t, mask)
    pair_loss = F.softplus(-(s.unsqueeze(-1) - s.unsqueeze(-2)))  # -logsig(s_i - s_j)
    loss = (delta * pair_loss * pairs).sum((-1, -2))
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "rankdpo",
    family="listwise",
    source="Karthik et al. 2024, Scalable Ranked Preference Optimization for Text-to-Image "
    "Generation (RankDPO), arXiv 2410.18013, Eqs. 5-7 and Algorithm 2, language-model form",
    needs=LISTS_WITH_REFERENCE,
)
def rankdpo_loss(inputs: LossInputs, beta: float = 0.1, rank_source: str = "true") -> LossOutput:
    """RankDPO (LM form): ``L = -sum_{t_i > t_j} Delta_ij * logsig(beta (r_i - r_j))``.

    ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``, ``G_i = 2^phi_i - 1`` with ``phi`` = the
    given scores (the paper's aggregated preference probability in [0, 1]), ``D(tau) = log2(1 + tau)``.
    ``rank_source="true"`` (default, Algorithm 2): ``tau`` = rank by the given scores, tied responses
    sharing their average rank; ``"model"`` (the Fig. 2 caption): rank by ``beta * r`` (then the loss
    is LiPO-lambda). The diffusion score ``-s`` of the paper is replaced by ``r`` for language models.
    Source: Karthik et al. 2024 (verified against the paper text).
    """
    if rank_source not in ("true", "model"):
        raise ValueError(f"rankdpo: rank_source must be 'true' or 'model', got {rank_source!r}")
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    ranks = _average_ranks(t, mask) if rank_source == "true" else _model_ranks(s, mask)
    delta = _lambda_weights(t, ranks)
    pair_loss = F.softplus(-(s.unsqueeze(-1) - s.unsqueeze(-2)))
    loss = (delta * pair_loss * _ordered_pairs(t, mask)).sum((-1, -2))
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "irpo",
    family="listwise",
    source="Wu, Surana et al. 2025, In-context Ranking Preference Optimization, arXiv 2504.15477; "
    "official rohan2810/In-context-Ranking-Preference-Optimization trainers.py rdpo_loss",
    needs=LISTS_WITH_REFERENCE,
)
def irpo_loss(inputs: LossInputs, beta: float = 1.0, weighting: str = "ndcg",
              length_normalize: bool = False) -> LossOutput:
    """IRPO: ``L = -(1/N) sum_i w_i * logsig(-LSE_i)``,
    ``LSE_i = logsumexp_{j != i} beta (r_j - r_i) - log(N - 1)``.

    ``w_i = (2^rel_i - 1) / log2(1 + rank_i)`` (``weighting="ndcg"``), or the official ablations
    ``1 / log2(1 + rank_i)`` (``"rank"``) and ``(2^rel_i - 1) / rank_i`` (``"gain_over_rank"``);
    ``rel`` = the given scores (graded relevance, must be >= 0), ``rank`` = 1-based rank by those scores
    with tied responses sharing their average rank, so an all-tied list still has a (formula) loss.
    ``length_normalize=True`` uses token-mean log-probs as the official code does (its items are
    in-context list entries); the default uses sequence sums for ``r_i``.
    K = 2, scores (1, 0): ``0.5 * DPO(beta)``. Defaults: beta 1.0 (README).
    Source: Wu, Surana et al. 2025 (verified against the official code).
    """
    weightings = ("ndcg", "rank", "gain_over_rank")
    if weighting not in weightings:
        raise ValueError(f"irpo: weighting must be one of {weightings}, got {weighting!r}")
    r, t, mask = _list_inputs(inputs)
    if bool(((t < 0) & mask).any()):
        raise ValueError("irpo: relevance scores must be >= 0 (its gains are 2^rel - 1); give graded scores, "
                         "not ranks")
    if length_normalize:
        r = inputs.length_normalized(r, "list")
    ranks = _average_ranks(t, mask)
    gains = torch.exp2(t) - 1.0
    if weighting == "ndcg":
        w = gains / torch.log2(1.0 + ranks)
    elif weighting == "rank":
        w = 1.0 / torch.log2(1.0 + ranks)
    else:
        w = gains / ranks
    k = r.shape[-1]
    eye = torch.eye(k, dtype=torch.bool, device=r.device).unsqueeze(0)
    others = mask.unsqueeze(-2) & ~eye
    diffs = beta * (r.unsqueeze(-2) - r.unsqueeze(-1))  # [b, i, j] = beta (r_j - r_i)
    n = mask.sum(-1, keepdim=True).to(r.dtype)
    lse = _masked_logsumexp(diffs, others) - torch.log((n - 1).clamp_min(1))
    per_item = w.detach() * F.logsigmoid(-lse) * mask
    loss = -per_item.sum(-1) / n.squeeze(-1)
    return LossOutput(loss, list_metrics(beta * r, t, mask, inputs))


@register_loss(
    "adpo",
    family="listwise",
    source="Wang Zixian 2025, Anchored Direct Preference Optimization, arXiv 2510.18913; the author's "
    "VERL integration (adpo_policy_loss)",
    needs=LISTS_WITH_REFERENCE,
)
def adpo_loss(inputs: LossInputs, tau: float = 0.8, beta_reward: float = 0.5) -> LossOutput:
    """ADPO (listwise, anchored): ``L = -sum_k q_k log p_k``.

    ``q = softmax((R - mean R) / (std R + 1e-8) / beta_reward)`` (target, no gradient; ``std`` unbiased,
    over the list's real responses, as the author's code); ``p = softmax((lp - lp_anchor) / tau)``.
    The anchor is the reference slot: the frozen reference by default, a previous policy with
    ``reference.sync_every`` (alpha 1) or a curriculum. Tied rewards get equal target mass; an all-tied
    list has a uniform target. K = 2 equals ``cdpo`` with ``beta = 1/tau`` and ``eps = q_2``.
    Defaults: tau 0.8 and beta_reward 0.5 (VERL integration). Not included: the optional per-token
    anchor KL (``beta_anchor_kl``, default 0) and the adaptive temperature.
    Source: arXiv 2510.18913 (verified against the authors' code).
    """
    if tau <= 0 or beta_reward <= 0:
        raise ValueError(f"adpo: tau and beta_reward must be > 0, got {tau}, {beta_reward}")
    r, t, mask = _list_inputs(inputs)
    with torch.no_grad():
        n = mask.sum(-1, keepdim=True).to(t.dtype)
        mean = (t * mask).sum(-1, keepdim=True) / n
        var = (((t - mean) * mask) ** 2).sum(-1, keepdim=True) / (n - 1).clamp_min(1)
        normalized = (t - mean) / (var.sqrt() + 1e-8)
        q = _masked_softmax(normalized / beta_reward, mask)
    log_p = _masked_log_softmax(r / tau, mask)
    loss = -(q * log_p).sum(-1)
    metrics = list_metrics(r / tau, t, mask, inputs)
    metrics["adpo/target_entropy"] = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
    return LossOutput(loss, metrics)


@register_loss(
    "infonca",
    family="listwise",
    source="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, "
    "arXiv 2402.05369 (InfoNCA); official thu-ml/Noise-Contrastive-Alignment reward_trainer",
    needs=LISTS_WITH_REFERENCE,
)
def infonca_loss(inputs: LossInputs, beta: float = 0.01, alpha: float = 1.0) -> LossOutput:
    """InfoNCA: ``L = -sum_k q_k log softmax_k(s)``, ``q = softmax(R / alpha)``, ``s = beta * r``.

    ``R`` = the given scores (explicit rewards), ``alpha`` the target temperature (the official code's
    ``temperature_alpha`` is ``1/alpha``). Tied rewards get equal target mass. With one response per
    list rewarded infinitely better (``alpha -> 0``) and K = 2 it is DPO.
    Defaults: beta 0.01 (as ``nca``), alpha 1. Source: Chen et al. 2024 (verified).
    """
    if alpha <= 0:
        raise ValueError(f"infonca: alpha must be > 0, got {alpha}")
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    q = _masked_softmax(t / alpha, mask).detach()
    loss = -(q * _masked_log_softmax(s, mask)).sum(-1)
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "nca_list",
    family="listwise",
    source="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, "
    "arXiv 2402.05369 (NCA, K responses); official thu-ml/Noise-Contrastive-Alignment reward_trainer nca_loss",
    needs=LISTS_WITH_REFERENCE,
)
def nca_list_loss(inputs: LossInputs, beta: float = 0.01, alpha: float = 1.0) -> LossOutput:
    """NCA with K responses: ``L = -(1/N) sum_k logsig(-s_k) - sum_k q_k logsig(s_k)``.

    ``s = beta * r``, ``q = softmax(R / alpha)`` from the given scores. K = 2 with a hard target
    (``q = (1, 0)``) is the pairwise ``nca``. Tied rewards get equal target mass.
    Defaults: beta 0.01 (as ``nca``), alpha 1. Source: Chen et al. 2024 (verified).
    """
    if alpha <= 0:
        raise ValueError(f"nca_list: alpha must be > 0, got {alpha}")
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    q = _masked_softmax(t / alpha, mask).detach()
    n = mask.sum(-1).to(s.dtype)
    loss = -(F.logsigmoid(-s) * mask).sum(-1) / n - (q * F.logsigmoid(s)).sum(-1)
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "exo_list",
    family="listwise",
    source="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, "
    "arXiv 2402.00856 (EXO with K samples and rewards); official haozheji/exact-optimization exact_loss",
    needs=LISTS_WITH_REFERENCE,
)
def exo_list_loss(inputs: LossInputs, beta: float = 0.1, beta_r: float = 1.0) -> LossOutput:
    """EXO with K responses and rewards: ``L = KL(p_f || p_r) = sum_k p_f,k (log p_f,k - log p_r,k)``.

    ``p_f = softmax(beta * r)`` (the policy's implicit distribution over the list), ``p_r =
    softmax(R / beta_r)`` from the given scores (no gradient). K = 2 with ``R_1 - R_2 =
    beta_r * log((1 - eps)/eps)`` is the pairwise ``exo`` with that ``eps``. Tied rewards get equal
    target mass. Defaults: beta 0.1 (as ``exo``), beta_r 1 (official code; it also uses beta_pi 1).
    Source: Ji et al. 2024 (verified).
    """
    if beta_r <= 0:
        raise ValueError(f"exo_list: beta_r must be > 0, got {beta_r}")
    r, t, mask = _list_inputs(inputs)
    s = beta * r
    log_pf = _masked_log_softmax(s, mask)
    log_pr = _masked_log_softmax(t / beta_r, mask).detach()
    loss = (log_pf.exp() * mask * (log_pf - log_pr)).sum(-1)
    return LossOutput(loss, list_metrics(s, t, mask, inputs))


@register_loss(
    "tpo_list",
    family="listwise",
    source="Liao et al. 2024, TPO: Aligning Large Language Models with Multi-branch & Multi-step "
    "Preference Trees, arXiv 2410.12854 (ICLR 2025); official MrBlankness/TPO loss.py lambda_rank_loss "
    "(pairwise ranking term only)",
    needs=LISTS_WITH_REFERENCE,
    verified="partial",
)
def tpo_list_loss(inputs: LossInputs, beta: float = 0.5, length_normalize: bool = True) -> LossOutput:
    """TPO list ranking (official code's form): ``L = sum_{i != j, t_i != t_j}
    -logsig(beta (u_i - u_j) sign(t_i - t_j)) / (N (N - 1))``.

    ``u_k = r_k / |y_k|`` (the token-mean log-ratio; the official code's per-response score when a
    response is one step) or ``r_k`` with ``length_normalize=False``. Which form: the official code's
    pairwise logistic ranking averaged over all N (N - 1) ordered pairs, not the paper's LambdaLoss
    description. Two parts of the code are not reproduced: (1) the Adaptive Step Reward (step weights
    from hidden-state similarity of shared steps), which needs step boundaries and hidden states;
    (2) its outer wrap ``-logsig(beta * rank_loss)``, which decreases as the ranking loss grows
    (minimising it would reverse the ranking); ``beta`` scales the score differences instead, as in
    DPO. Tied pairs contribute nothing (the code adds a constant ``log 2`` for them). K = 2 is
    ``sigmoid_norm`` (length-normalised DPO). Default beta 0.5 (``tpo_train.py``).
    Source: Liao et al. 2024 (PARTIAL: code and paper differ).
    """
    r, t, mask = _list_inputs(inputs)
    u = r
    if length_normalize:
        u = inputs.length_normalized(r, "list")
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    sign = torch.sign(t.unsqueeze(-1) - t.unsqueeze(-2))
    pair_loss = F.softplus(-beta * (u.unsqueeze(-1) - u.unsqueeze(-2)) * sign) * (both & (sign != 0))
    n = mask.sum(-1).to(r.dtype)
    loss = pair_loss.sum((-1, -2)) / (n * (n - 1)).clamp_min(1)
    return LossOutput(loss, list_metrics(beta * u, t, mask, inputs))
