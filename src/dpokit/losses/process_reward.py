"""Online process reward learning (OPRL, released as "iStar"): an implicit step reward from a
trajectory-level DPO-trained process reward model, turned into step advantages for the policy.

Liu et al. 2025, arXiv 2509.19199; the formulas follow the official code (``istar/dp_rm.py``,
``istar/rm_utils.py``, ``istar/core_istar.py``); the paper body was not read.

* The PRM ``pi_phi`` is a copy of the policy LM; the reference is the rollout policy ``pi_old``.
  Step reward of action ``a_t``: ``r_phi(a_t) = beta * sum_{tokens k of a_t} log pi_phi/pi_old``.
* ``oprl_prm`` trains the PRM with trajectory DPO on successful vs failed trajectories of one task.
* :func:`oprl_advantages` combines an RLOO episode advantage with an RLOO step advantage;
  ``oprl`` is the PPO-clip policy loss on those advantages.

Data (``data.kind: lists``; a group = the G trajectories of one task): ``list_scores`` = episode
returns; ``extras["list_num_steps"]`` [B, G] steps per trajectory; ``extras["step_rewards"]``
[B, G, S] and ``extras["step_mask"]`` [B, G, S] (the PRM's step rewards, no gradient);
``extras["token_step"]`` [B, G, T] the step index of every response token (-1: none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput
from .policy_gradient import (OLD_TOKEN_LOGPS, aggregate, clipped_surrogate, pg_metrics, policy_terms,
                              rloo_advantages)
from .registry import Needs, register_loss

Tensor = torch.Tensor

_STEP_BASELINES = ("first", "all")
_NORMALIZE = ("batch_norm", "none")


def batch_norm_step_rewards(step_rewards: Tensor, step_mask: Tensor) -> Tensor:
    """``istar_norm=batch_norm``: divide by the largest ``|reverse cumulative sum|`` of the step
    rewards over the batch (unchanged when that is 0)."""
    r = step_rewards * step_mask
    returns = torch.flip(torch.cumsum(torch.flip(r, [-1]), -1), [-1])
    scale = (returns.abs() * step_mask).max()
    return r if float(scale) == 0.0 else r / scale


def step_advantages(step_rewards: Tensor, step_mask: Tensor, baseline: str = "first") -> Tensor:
    """RLOO transform of the step rewards within each group, [B, G, S]:
    ``A_s = n/(n-1) (r_s - mean)``.

    ``baseline: first`` (the released code): ``mean`` and ``n`` over the **first** step of each real
    trajectory of the group. ``all`` [partial]: over every real step of the group (whether the paper
    means this is not established)."""
    if baseline not in _STEP_BASELINES:
        raise ValueError(f"step baseline must be one of {_STEP_BASELINES}, got {baseline!r}")
    mask = step_mask.bool()
    r = step_rewards.masked_fill(~mask, 0.0).detach()
    if baseline == "first":
        present = mask[..., 0]
        values = r[..., 0] * present
    else:
        present = mask.flatten(-2)
        values = r.flatten(-2)
    n = present.sum(-1).to(r.dtype).view(-1, 1, 1)
    mean = values.sum(-1).view(-1, 1, 1) / n.clamp_min(1)
    scale = torch.where(n > 1, n / (n - 1).clamp_min(1), torch.zeros_like(n))
    return (scale * (r - mean)) * mask


def oprl_advantages(episode_rewards: Tensor, trajectory_mask: Tensor, step_rewards: Tensor, step_mask: Tensor,
                    step_weight: float = 1.0, step_baseline: str = "first", normalize: str = "batch_norm",
                    process_only: bool = False) -> Tensor:
    """``A = A^E + w A^S`` per step, [B, G, S]: ``A^E`` = RLOO on the episode returns of the group
    (broadcast over the trajectory's steps), ``A^S`` = :func:`step_advantages` of the (normalised,
    ``normalize: batch_norm``) step rewards; ``process_only`` keeps ``A^S`` alone. No gradient."""
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    mask = step_mask.bool() & trajectory_mask.bool().unsqueeze(-1)
    r = step_rewards.detach()
    if normalize == "batch_norm":
        r = batch_norm_step_rewards(r, mask)
    a_step = step_advantages(r, mask, step_baseline)
    if process_only:
        return a_step
    a_episode = rloo_advantages(episode_rewards.detach(), trajectory_mask).unsqueeze(-1)
    return (a_episode + step_weight * a_step) * mask


def _prm_needs(score: str = "step_mean", **_) -> Needs:
    return Needs(reference=True, data="lists", extras=("list_num_steps",) if score == "step_mean" else ())


@register_loss(
    "oprl_prm",
    family="process_reward",
    source="Liu et al. 2025, arXiv 2509.19199 (OPRL / iStar), official code compute_eto_loss_rm "
    "(trajectory DPO of the implicit process reward model)",
    needs=_prm_needs,
)
def oprl_prm_loss(inputs: LossInputs, beta: float = 0.05, score: str = "step_mean") -> LossOutput:
    """Trajectory DPO for the implicit PRM: ``L = mean_{R_i > R_j} -log sigmoid(q_i - q_j)``.

    The policy fields hold the PRM ``pi_phi``, the reference fields the rollout policy ``pi_old``:
    ``q_i = beta * (lp_i - lr_i) / n_i`` with ``n_i`` = the trajectory's steps (``score: step_mean``,
    the released code: the mean over steps of the step rewards ``beta * sum_k log pi_phi/pi_old``)
    or ``q_i = beta * (lp_i - lr_i)`` (``score: sum``, the paper's equation). Pairs: every response
    pair of the group with a higher return against a lower one (success x failure for binary
    returns, the code's full cross product); a group without such a pair gives 0. Gradients reach
    ``pi_phi`` (the released update detaches them; this follows the equation).
    Defaults: beta 0.05 (``beta_train``). Source: Liu et al. 2025, official code.
    """
    if score not in ("step_mean", "sum"):
        raise ValueError(f"oprl_prm: score must be 'step_mean' or 'sum', got {score!r}")
    inputs.require("list_policy_logps", "list_reference_logps", "list_scores", "list_mask")
    mask = inputs.list_mask.bool()
    q = beta * (inputs.list_policy_logps - inputs.list_reference_logps)
    if score == "step_mean":
        steps = (inputs.extras or {}).get("list_num_steps")
        if steps is None:
            raise ValueError("oprl_prm with score=step_mean needs LossInputs.extras['list_num_steps']")
        q = q / steps.to(q.dtype).clamp_min(1)
    q = q.masked_fill(~mask, 0.0)
    t = inputs.list_scores.to(q.dtype)
    pairs = mask.unsqueeze(-1) & mask.unsqueeze(-2) & (t.unsqueeze(-1) > t.unsqueeze(-2))
    per_pair = -F.logsigmoid(q.unsqueeze(-1) - q.unsqueeze(-2)) * pairs
    count = pairs.sum((-1, -2)).to(q.dtype)
    loss = per_pair.sum((-1, -2)) / count.clamp_min(1)
    right = (pairs & (q.unsqueeze(-1) > q.unsqueeze(-2))).sum().to(q.dtype)
    return LossOutput(loss, {"prm/pair_accuracy": right / count.sum().clamp_min(1),
                             "prm/pairs": count.sum(), "prm/score_mean": (q.detach() * mask).sum() / mask.sum()})


def _oprl_needs(**_) -> Needs:
    return Needs(reference=False, data="lists", token_logps=True,
                 extras=("step_rewards", "step_mask", "token_step", OLD_TOKEN_LOGPS))


def token_advantages(step_adv: Tensor, token_step: Tensor) -> Tensor:
    """Broadcast per-step advantages [B, G, S] over each step's tokens, [B, G, T] (0 where
    ``token_step < 0``)."""
    idx = token_step.long()
    gathered = torch.gather(step_adv, -1, idx.clamp_min(0))
    return gathered * (idx >= 0)


@register_loss(
    "oprl",
    family="process_reward",
    source="Liu et al. 2025, arXiv 2509.19199 (OPRL / iStar), official code compute_istar_rloo_advantage "
    "and verl's PPO-clip policy loss",
    needs=_oprl_needs,
)
def oprl_loss(inputs: LossInputs, step_weight: float = 1.0, step_baseline: str = "first",
              normalize: str = "batch_norm", process_only: bool = False, clip_eps: float = 0.2,
              aggregation: str = "token_mean") -> LossOutput:
    """PPO-clip on OPRL's step advantages: ``L = agg_t max(-A_t rho_t, -A_t clip(rho_t, 1-e, 1+e))``.

    ``A_t = A^E + w A^S`` of the step that token t belongs to (:func:`oprl_advantages`; ``w`` =
    ``step_weight``), ``rho_t = pi/pi_old`` per token (on-policy without ``list_old_token_logps``),
    no KL term (the released script). ``step_baseline: all`` is [partial].
    Defaults: w 1.0, clip 0.2, first-step baseline, batch_norm (released script).
    Source: Liu et al. 2025, official code.
    """
    lp, old, _, token_mask = policy_terms(inputs, "token", 0.0)
    extras = inputs.extras or {}
    for key in ("step_rewards", "step_mask", "token_step"):
        if key not in extras:
            raise ValueError(f"oprl needs LossInputs.extras[{key!r}]")
    inputs.require("list_scores")
    mask = inputs.list_mask.bool()
    episode = inputs.list_scores.to(lp.dtype).masked_fill(~mask, 0.0)
    adv = oprl_advantages(episode, mask, extras["step_rewards"].to(lp.dtype), extras["step_mask"].bool(),
                          step_weight, step_baseline, normalize, process_only)
    per_token_adv = token_advantages(adv, extras["token_step"]) * token_mask
    per_token, clipped = clipped_surrogate(lp - old, per_token_adv, clip_eps, clip_eps)
    loss = aggregate(per_token, token_mask, aggregation)
    metrics = pg_metrics(episode, rloo_advantages(episode, mask), mask)
    m = token_mask.to(lp.dtype)
    metrics["step_advantages/abs_mean"] = (per_token_adv.abs() * m).sum() / m.sum().clamp_min(1)
    metrics["clip_fraction"] = (clipped.to(lp.dtype) * m).sum() / m.sum().clamp_min(1)
    return LossOutput(loss, metrics)
