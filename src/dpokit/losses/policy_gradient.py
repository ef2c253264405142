"""Policy-gradient losses on K sampled responses per prompt with scalar rewards (``data.kind: lists``).

Inputs ([B, K], K = most responses of a group in the batch): ``list_policy_logps`` (summed log-probs
of each response under the policy, with gradient), ``list_scores`` = the rewards ``R_k``,
``list_mask`` (True on real responses; padded entries never change a value or a gradient) and, where
a loss asks for them, ``list_reference_logps`` and the per-token ``list_policy_token_logps``,
``list_reference_token_logps``, ``list_token_mask`` ([B, K, T]).

Sampling-policy log-probs (``pi_old``, the policy that generated the responses) are per-example data:
``extras["list_old_logps"]`` [B, K] (sequence level) or ``extras["list_old_token_logps"]`` [B, K, T]
(token level). Without them the loss is on-policy: ``pi_old`` is the current policy detached, the
ratio is 1 in value and its gradient is the plain policy gradient (one update per sample).

Every loss returns a per-prompt loss [B]; the trainer's batch mean weights every prompt equally.
Advantages are computed without gradient. The advantage estimators are public functions
(:func:`reinforce_advantages`, :func:`rloo_advantages`, :func:`grpo_advantages`) so that round
strategies and other families (COPO, OPRL) use the same numbers.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .base import LossInputs, LossOutput
from .registry import Needs, register_loss

Tensor = torch.Tensor

OLD_LOGPS = "list_old_logps"
OLD_TOKEN_LOGPS = "list_old_token_logps"
_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum")
_LEVELS = ("token", "sequence")
_BASELINES = ("mean", "none")


# ---- advantage estimators (pure functions, no gradient) --------------------------------------------
def _count(mask: Tensor, dtype) -> Tensor:
    return mask.sum(-1, keepdim=True).to(dtype)


def group_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real entries of each group (last dim), [B, 1]; 0 for an empty group."""
    return (values * mask).sum(-1, keepdim=True) / _count(mask, values.dtype).clamp_min(1)


def group_std(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Standard deviation over the real entries of each group, [B, 1] (Bessel-corrected by default,
    as ``torch.std``; 0 for groups with fewer than two real entries)."""
    n = _count(mask, values.dtype)
    centred = (values - group_mean(values, mask)) * mask
    dof = (n - 1.0) if unbiased else n
    var = (centred ** 2).sum(-1, keepdim=True) / dof.clamp_min(1)
    return torch.where(n > 1, var.sqrt(), torch.zeros_like(var))


def _centred(rewards: Tensor, mask: Tensor) -> Tensor:
    """``R - mean R`` over each group's real entries; exactly 0 in a group whose rewards are all equal
    (a floating-point mean of equal numbers can miss them by an ulp, which the std would then blow up)."""
    inf = torch.finfo(rewards.dtype).max
    constant = (torch.where(mask, rewards, -inf).amax(-1, keepdim=True)
                == torch.where(mask, rewards, inf).amin(-1, keepdim=True))
    centred = torch.where(constant, torch.zeros_like(rewards), rewards - group_mean(rewards, mask))
    return centred * mask


def reinforce_advantages(rewards: Tensor, mask: Tensor, baseline: str = "mean") -> Tensor:
    """``A_k = R_k - b``: ``b`` = the group mean of the rewards (``"mean"``) or 0 (``"none"``); 0 on padding."""
    if baseline not in _BASELINES:
        raise ValueError(f"baseline must be one of {_BASELINES}, got {baseline!r}")
    mask = mask.bool()
    rewards = rewards.masked_fill(~mask, 0.0)
    advantages = _centred(rewards, mask) if baseline == "mean" else rewards * mask
    return advantages.detach()


def rloo_advantages(rewards: Tensor, mask: Tensor) -> Tensor:
    """Leave-one-out: ``A_k = R_k - 1/(N-1) sum_{j != k} R_j = N/(N-1) (R_k - mean R)``; 0 in groups
    with fewer than two real responses (no baseline exists) and on padding."""
    mask = mask.bool()
    rewards = rewards.masked_fill(~mask, 0.0)
    n = _count(mask, rewards.dtype)
    scale = torch.where(n > 1, n / (n - 1.0).clamp_min(1), torch.zeros_like(n))
    return (scale * _centred(rewards, mask)).detach()


def grpo_advantages(rewards: Tensor, mask: Tensor, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-normalised: ``A_k = (R_k - mean R) / (std R + eps)`` (``scale=False``: ``R_k - mean R``);
    std Bessel-corrected as in the reference implementations; 0 on padding."""
    mask = mask.bool()
    rewards = rewards.masked_fill(~mask, 0.0)
    centred = _centred(rewards, mask)
    if scale:
        centred = centred / (group_std(rewards, mask) + eps)
    return centred.detach()


def k3_kl(policy_logps: Tensor, reference_logps: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) from samples of pi: ``exp(d) - d - 1``, ``d = lr - lp``
    (non-negative, unbiased; DeepSeekMath Eq. 4)."""
    d = reference_logps - policy_logps
    return torch.expm1(d) - d


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float,
                      dual_clip: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """PPO's clipped surrogate as a loss: ``max(-A rho, -A clip(rho, 1-clip_low, 1+clip_high))``,
    ``rho = exp(log_ratio)``; with ``dual_clip = c`` (> 1) the loss of a negative advantage is also
    capped at ``-c A`` (Ye et al. 2020, as verl). Returns ``(loss, clipped)``, ``clipped`` a bool of
    where the clipped term is active."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    is_clipped = clipped_loss > unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(loss, -advantages * dual_clip)
        loss = torch.where(advantages < 0, capped, loss)
    return loss, is_clipped


def aggregate(per_token: Tensor, token_mask: Tensor, aggregation: str) -> Tensor:
    """Per-token values [B, K, T] -> per-prompt [B]:

    * ``seq_mean_token_mean``: ``1/N sum_k 1/|y_k| sum_t`` (DeepSeekMath's GRPO),
    * ``token_mean``: ``sum_{k,t} / sum_k |y_k|`` within the group (DAPO's token-level mean),
    * ``seq_mean_token_sum``: ``1/N sum_k sum_t`` (no length normalisation).
    """
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    m = token_mask.to(per_token.dtype)
    per_token = per_token * m
    tokens = m.sum(-1)  # [B, K]
    responses = (tokens > 0).to(per_token.dtype).sum(-1).clamp_min(1)  # [B]
    if aggregation == "token_mean":
        return per_token.sum((-1, -2)) / tokens.sum(-1).clamp_min(1)
    per_response = per_token.sum(-1)
    if aggregation == "seq_mean_token_mean":
        per_response = per_response / tokens.clamp_min(1)
    return per_response.sum(-1) / responses


# ---- shared input handling ----------------------------------------------------------------------
def _rewards(inputs: LossInputs, like: Tensor) -> Tuple[Tensor, Tensor]:
    inputs.require("list_scores", "list_mask")
    mask = inputs.list_mask.bool()
    rewards = inputs.list_scores.to(torch.promote_types(inputs.list_scores.dtype, like.dtype))
    return rewards.masked_fill(~mask, 0.0), mask


def _shaped_rewards(inputs: LossInputs, kl_coef: float) -> Tuple[Tensor, Tensor]:
    """``R_k - kl_coef * (lp_k - lr_k)`` (detached; Ahmadian et al.'s KL-shaped sequence reward)."""
    inputs.require("list_policy_logps")
    rewards, mask = _rewards(inputs, inputs.list_policy_logps)
    if kl_coef:
        inputs.require("list_reference_logps")
        rewards = rewards - kl_coef * (inputs.list_policy_logps - inputs.list_reference_logps).detach()
    return rewards.masked_fill(~mask, 0.0), mask


def _score_function_loss(inputs: LossInputs, advantages: Tensor, mask: Tensor) -> Tensor:
    """``-1/N sum_k A_k lp(y_k)`` per prompt: its gradient is the REINFORCE estimator."""
    lp = inputs.list_policy_logps.masked_fill(~mask, 0.0)
    return -(advantages * lp).sum(-1) / mask.sum(-1).clamp_min(1).to(lp.dtype)


def pg_metrics(rewards: Tensor, advantages: Tensor, mask: Tensor) -> Dict[str, Tensor]:
    """``rewards/mean``, ``advantages/abs_mean``, ``advantages/zero_groups`` (share of groups whose
    advantages all vanish, i.e. that give no gradient)."""
    m = mask.to(rewards.dtype)
    n = m.sum().clamp_min(1)
    zero = ((advantages.abs() * m).sum(-1) == 0).to(rewards.dtype)
    return {"rewards/mean": (rewards.detach() * m).sum() / n,
            "advantages/abs_mean": (advantages.abs() * m).sum() / n,
            "advantages/zero_groups": zero.mean()}


def _reference_needed(kl_coef: float = 0.0, **_) -> Needs:
    return Needs(reference=bool(kl_coef), data="lists")


# ---- losses ---------------------------------------------------------------------------------------
@register_loss(
    "reinforce",
    family="policy_gradient",
    source="Williams 1992, Simple statistical gradient-following algorithms for connectionist "
    "reinforcement learning, Machine Learning 8:229-256 (REINFORCE with a baseline)",
    needs=_reference_needed,
)
def reinforce_loss(inputs: LossInputs, baseline: str = "mean", kl_coef: float = 0.0) -> LossOutput:
    """REINFORCE with a baseline: ``L = -1/N sum_k (R'_k - b) lp(y_k)``, gradient
    ``-1/N sum_k (R'_k - b) grad log pi(y_k|x)``.

    ``R'_k = R_k - kl_coef (lp_k - lr_k)`` (the KL-shaped reward, detached; a reference only when
    ``kl_coef > 0``), ``b`` = the group mean of ``R'`` (``baseline: mean``; it includes ``R'_k`` itself,
    so the estimator is biased by the factor ``(N-1)/N``, see ``rloo``) or 0 (``none``).
    With K = 2 and the mean baseline the advantage is half the reward difference ``(R_1 - R_2)/2``.
    Source: Williams 1992 (the estimator); the group-mean baseline as in Ahmadian et al. 2024.
    """
    rewards, mask = _shaped_rewards(inputs, kl_coef)
    advantages = reinforce_advantages(rewards, mask, baseline)
    return LossOutput(_score_function_loss(inputs, advantages, mask), pg_metrics(rewards, advantages, mask))


@register_loss(
    "rloo",
    family="policy_gradient",
    source="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for "
    "Learning from Human Feedback in LLMs, arXiv 2402.14740 (RLOO); Kool et al. 2019 (the estimator)",
    needs=_reference_needed,
)
def rloo_loss(inputs: LossInputs, kl_coef: float = 0.0) -> LossOutput:
    """REINFORCE Leave-One-Out: ``L = -1/N sum_k (R'_k - 1/(N-1) sum_{j != k} R'_j) lp(y_k)``.

    ``R'_k = R_k - kl_coef (lp_k - lr_k)`` (detached; the paper's KL-shaped sequence reward). The
    leave-one-out baseline is unbiased; ``A_k = N/(N-1) (R'_k - mean R')``. With K = 2,
    ``A_1 = R_1 - R_2`` and the gradient weight ``A_1/N`` is half the reward difference. Groups with
    one real response have no baseline and give 0. Source: Ahmadian et al. 2024, Eq. (8).
    """
    rewards, mask = _shaped_rewards(inputs, kl_coef)
    advantages = rloo_advantages(rewards, mask)
    return LossOutput(_score_function_loss(inputs, advantages, mask), pg_metrics(rewards, advantages, mask))


def _grpo_needs(beta: float = 0.04, level: str = "token", **_) -> Needs:
    token = level == "token"
    return Needs(reference=bool(beta), data="lists", token_logps=token,
                 extras=(OLD_TOKEN_LOGPS,) if token else (OLD_LOGPS,))


def policy_terms(inputs: LossInputs, level: str, beta: float) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """``(lp, old, kl, token_mask)`` at ``level``: per-token [B, K, T] (``token``) or per-response
    [B, K, 1] (``sequence``, the whole response one action); ``old`` = ``pi_old``'s log-probs (the
    detached policy when the data carries none); ``kl`` = k3 against the reference (None if beta = 0)."""
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    inputs.require("list_mask")
    mask = inputs.list_mask.bool()
    if level == "token":
        inputs.require("list_policy_token_logps", "list_token_mask")
        lp = inputs.list_policy_token_logps
        token_mask = inputs.list_token_mask.bool() & mask.unsqueeze(-1)
        old = (inputs.extras or {}).get(OLD_TOKEN_LOGPS)
        ref = inputs.list_reference_token_logps if beta else None
        if beta and ref is None:
            inputs.require("list_reference_token_logps")
    else:
        inputs.require("list_policy_logps")
        lp = inputs.list_policy_logps.unsqueeze(-1)
        token_mask = mask.unsqueeze(-1)
        old = (inputs.extras or {}).get(OLD_LOGPS)
        old = None if old is None else old.unsqueeze(-1)
        ref = None
        if beta:
            inputs.require("list_reference_logps")
            ref = inputs.list_reference_logps.unsqueeze(-1)
    old = lp.detach() if old is None else old.to(lp.dtype)
    if old.shape != lp.shape:
        raise ValueError(f"sampling-policy log-probs have shape {tuple(old.shape)}, expected {tuple(lp.shape)}")
    fill = ~token_mask
    lp, old = lp.masked_fill(fill, 0.0), old.masked_fill(fill, 0.0)
    kl = None if ref is None else k3_kl(lp, ref.to(lp.dtype).masked_fill(fill, 0.0)).masked_fill(fill, 0.0)
    return lp, old, kl, token_mask


@register_loss(
    "grpo",
    family="policy_gradient",
    source="Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open "
    "Language Models, arXiv 2402.03300, Eq. (3)-(4) (GRPO); token_mean aggregation: Yu et al. 2025 "
    "(DAPO, arXiv 2503.14476)",
    needs=_grpo_needs,
)
def grpo_loss(inputs: LossInputs, beta: float = 0.04, clip_eps: float = 0.2, clip_eps_high: float = -1.0,
              level: str = "token", aggregation: str = "seq_mean_token_mean", scale_rewards: bool = True,
              eps: float = 1e-6) -> LossOutput:
    """GRPO: ``L = agg_{k,t} [ max(-A_k rho_t, -A_k clip(rho_t, 1-e_lo, 1+e_hi)) + beta * KL3_t ]``.

    ``A_k = (R_k - mean R)/(std R + eps)`` over the prompt's group (``scale_rewards: false`` drops the
    division), ``rho_t = pi(y_t|.) / pi_old(y_t|.)`` against the sampling policy,
    ``KL3_t = exp(lr_t - lp_t) - (lr_t - lp_t) - 1`` (the k3 estimator of KL(pi || ref); no reference
    when ``beta = 0``). ``clip_eps`` = ``e_lo``; ``clip_eps_high`` = ``e_hi`` (< 0: equal to ``e_lo``).
    ``level``: ``token`` (per-token ratios, needs per-token log-probs) or ``sequence`` (the response is
    one action: ``rho = pi(y)/pi_old(y)``, k3 on the summed log-ratio). ``aggregation`` (token level):
    ``seq_mean_token_mean`` (paper), ``token_mean`` (DAPO), ``seq_mean_token_sum``.
    With the clip inactive and ``beta = 0`` the gradient is REINFORCE's with the normalised advantage.
    Defaults: beta 0.04, clip 0.2 (paper). Source: Shao et al. 2024, Eq. (3)-(4).
    """
    lp, old, kl, token_mask = policy_terms(inputs, level, beta)
    rewards, mask = _rewards(inputs, lp)
    advantages = grpo_advantages(rewards, mask, scale_rewards, eps)
    high = clip_eps if clip_eps_high < 0 else clip_eps_high
    per_token, clipped = clipped_surrogate(lp - old, advantages.unsqueeze(-1), clip_eps, high)
    if kl is not None:
        per_token = per_token + beta * kl
    agg = aggregation if level == "token" else "seq_mean_token_mean"
    loss = aggregate(per_token, token_mask, agg)
    metrics = pg_metrics(rewards, advantages, mask)
    m = token_mask.to(lp.dtype)
    metrics["clip_fraction"] = (clipped.to(lp.dtype) * m).sum() / m.sum().clamp_min(1)
    if kl is not None:
        metrics["kl"] = (kl.detach() * m).sum() / m.sum().clamp_min(1)
    return LossOutput(loss, metrics)


# ---- COPO: consistency-aware policy optimisation -----------------------------------------------------
ANSWER_IDS = "answer_ids"
_COPO_MODES = ("soft_with_zero", "soft_with_forced", "only_soft", "only_global", "no_global")


def answer_ids_from_strings(answers) -> Tuple[Tensor, Tensor]:
    """Extracted answers (one list of strings per prompt) -> ``(ids [B, K] float, mask [B, K])``:
    responses with equal strings share an id (plain string equality, as the released code)."""
    width = max((len(a) for a in answers), default=0)
    ids = torch.full((len(answers), width), -1.0)
    mask = torch.zeros(len(answers), width, dtype=torch.bool)
    for b, group in enumerate(answers):
        seen: Dict[str, int] = {}
        for k, answer in enumerate(group):
            ids[b, k] = float(seen.setdefault(str(answer), len(seen)))
            mask[b, k] = True
    return ids, mask


def answer_entropy(answer_ids: Tensor, mask: Tensor) -> Tensor:
    """``H_g = -sum_a p_a log2 p_a`` over each group's extracted answers, [B] (0 when all agree)."""
    mask = mask.bool()
    same = (answer_ids.unsqueeze(-1) == answer_ids.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    n = mask.sum(-1, keepdim=True).to(torch.float64).clamp_min(1)
    p = same.sum(-1).to(torch.float64) / n  # p of the answer of response k
    # sum over answers a of -p_a log2 p_a = sum over responses k of -(1/n) log2 p_(a_k)
    h = -(torch.log2(p.clamp_min(1e-300)) * mask).sum(-1) / n.squeeze(-1)
    return h.clamp_min(0.0).to(answer_ids.dtype if answer_ids.is_floating_point() else torch.float32)


def copo_advantages(rewards: Tensor, answer_ids: Tensor, mask: Tensor, k: float = 5.0, b: float = 1.0,
                    mode: str = "soft_with_zero", consistency_coef: bool = False,
                    eps: float = 1e-6) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """COPO's ``(A_loc [B, K], A_glob [B, 1], w [B, K], H [B])`` (see :func:`copo_loss`), no gradient.

    ``A_glob`` is normalised across the prompt groups of the batch (all processes when distributed)."""
    from ._distributed import gather_detached

    if mode not in _COPO_MODES:
        raise ValueError(f"copo mode must be one of {_COPO_MODES}, got {mode!r}")
    mask = mask.bool()
    rewards = rewards.masked_fill(~mask, 0.0).detach()
    local = grpo_advantages(rewards, mask, True, eps)
    entropy = answer_entropy(answer_ids, mask).to(rewards.dtype)
    n = mask.sum(-1).to(rewards.dtype)
    if consistency_coef:
        lam = torch.where(n > 1, (1.0 - 1.0 / n.clamp_min(1)) / torch.log2(n.clamp_min(2)), torch.zeros_like(n))
        coef = 1.0 - lam * entropy
    else:
        coef = torch.ones_like(entropy)
    global_reward = group_mean(rewards, mask).squeeze(-1) * coef  # R_g
    everyone = gather_detached(global_reward)
    centred = global_reward - everyone.mean()
    if everyone.numel() > 1 and not bool((everyone == everyone[0]).all()):
        glob = centred / (everyone.std() + eps)
    else:
        glob = torch.zeros_like(centred)  # one group, or all equal: no global signal
    w = torch.sigmoid(k * (entropy - b)).unsqueeze(-1).expand_as(rewards)
    if mode == "soft_with_zero":
        w = w * (rewards != 0)
    elif mode == "soft_with_forced":
        w = w * (local != 0)
    elif mode == "only_global":
        w = torch.zeros_like(w)
    elif mode == "no_global":
        w = torch.ones_like(w)
    return local, glob.unsqueeze(-1), (w * mask).to(rewards.dtype), entropy


def effective_advantages(local: Tensor, glob: Tensor, w: Tensor, mask: Tensor) -> Tensor:
    """At ratio 1 the blended loss's gradient on ``lp(y_k)`` is ``-(w_k A_loc_k + (1 - w_k) A_glob)``."""
    return (w * local + (1.0 - w) * glob) * mask


def vanishing_advantage_fraction(rewards: Tensor, mask: Tensor, answer_ids: Optional[Tensor] = None,
                                 method: str = "grpo", tol: float = 1e-9, **copo) -> float:
    """Share of prompt groups that give no gradient: every response's (effective) advantage is 0.

    ``method``: ``grpo`` (the local advantage alone) or ``copo`` (the entropy-blended advantage of
    :func:`copo_advantages`, hyperparameters as keywords; needs ``answer_ids``)."""
    mask = mask.bool()
    if method == "grpo":
        adv = grpo_advantages(rewards, mask)
    elif method == "copo":
        if answer_ids is None:
            raise ValueError("vanishing_advantage_fraction(method='copo') needs answer_ids")
        local, glob, w, _ = copo_advantages(rewards, answer_ids, mask, **copo)
        adv = effective_advantages(local, glob, w, mask)
    else:
        raise ValueError(f"method must be 'grpo' or 'copo', got {method!r}")
    vanished = ((adv.abs() * mask) <= tol).all(-1)
    return float(vanished.to(torch.float64).mean())


def _copo_needs(beta: float = 0.0, level: str = "token", **_) -> Needs:
    base = _grpo_needs(beta=beta, level=level)
    return Needs(reference=base.reference, data="lists", token_logps=base.token_logps, batch_coupled=True,
                 extras=(ANSWER_IDS,) + base.extras)


@register_loss(
    "copo",
    family="policy_gradient",
    source="Han et al. 2025, Consistency-Aware Policy Optimization, arXiv 2508.04138, official code "
    "(compute_score_global, compute_grpo_outcome_advantage_with_global, compute_policy_loss_with_global)",
    needs=_copo_needs,
)
def copo_loss(inputs: LossInputs, k: float = 5.0, b: float = 1.0, mode: str = "soft_with_zero",
              consistency_coef: bool = False, clip_eps: float = 0.2, clip_eps_high: float = -1.0,
              dual_clip: float = 3.0, beta: float = 0.0, level: str = "token",
              aggregation: str = "seq_mean_token_mean", eps: float = 1e-6) -> LossOutput:
    """COPO: ``l_t = (1 - w) l_t(A_glob) + w l_t(A_loc)``, both PPO dual-clip surrogates on one ratio.

    Per group g of G responses with rewards ``r_i`` and extracted answers ``a_i``
    (``extras["answer_ids"]``, equal ids = equal answer strings):
    ``A_loc_i = (r_i - mean r)/(std r + eps)`` (GRPO); ``H_g = -sum_a p_a log2 p_a`` (answer entropy);
    ``R_g = mean_g(r) * c_g`` with ``c_g = 1 - lambda H_g``, ``lambda = (1 - 1/G)/log2 G``
    (``consistency_coef: true``; else ``c_g = 1``); ``A_glob_g = (R_g - mean_g' R)/(std_g' R + eps)``
    across the groups of the batch (batch-coupled); ``w_g = sigmoid(k (H_g - b))`` is the weight of
    the **local** loss: consistent groups (where ``A_loc`` vanishes) learn from the global one.
    ``mode``: ``soft_with_zero`` (released default: ``w * 1[r_i != 0]``, wrong responses take the pure
    global loss), ``soft_with_forced`` (``w * 1[A_loc_i != 0]``), ``only_soft`` (``w``),
    ``only_global`` (``w = 0``), ``no_global`` (``w = 1``: GRPO with dual clip).
    ``l_t(A) = max(-A rho, -A clip(rho, 1-e_lo, 1+e_hi))``, capped at ``-dual_clip * A`` for ``A < 0``.
    Defaults: the released launch script (``k = 5``, ``b = 1``, ``soft_with_zero``, coefficient off,
    clip 0.2/0.2, dual clip 3, no KL, seq-mean-token-mean). Source: the official code (the paper body
    was not read).
    """
    lp, old, kl, token_mask = policy_terms(inputs, level, beta)
    rewards, mask = _rewards(inputs, lp)
    answer_ids = (inputs.extras or {}).get(ANSWER_IDS)
    if answer_ids is None:
        raise ValueError(f"copo needs LossInputs.extras[{ANSWER_IDS!r}] (one id per extracted answer)")
    local, glob, w, entropy = copo_advantages(rewards, answer_ids, mask, k, b, mode, consistency_coef, eps)
    high = clip_eps if clip_eps_high < 0 else clip_eps_high
    dual = dual_clip if dual_clip and dual_clip > 0 else None
    log_ratio = lp - old
    loss_loc, clipped = clipped_surrogate(log_ratio, local.unsqueeze(-1), clip_eps, high, dual)
    loss_glob, _ = clipped_surrogate(log_ratio, glob.unsqueeze(-1).expand_as(log_ratio), clip_eps, high, dual)
    wt = w.unsqueeze(-1)
    per_token = (1.0 - wt) * loss_glob + wt * loss_loc
    if kl is not None:
        per_token = per_token + beta * kl
    loss = aggregate(per_token, token_mask, aggregation if level == "token" else "seq_mean_token_mean")
    metrics = pg_metrics(rewards, effective_advantages(local, glob, w, mask), mask)
    m = token_mask.to(lp.dtype)
    metrics.update({"copo/answer_entropy": entropy.mean(), "copo/local_weight": (w * mask).sum() / mask.sum().clamp_min(1),
                    "advantages/local_zero_groups": ((local.abs() * mask).sum(-1) == 0).to(lp.dtype).mean(),
                    "clip_fraction": (clipped.to(lp.dtype) * m).sum() / m.sum().clamp_min(1)})
    return LossOutput(loss, metrics)
