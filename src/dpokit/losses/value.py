"""Value-based losses: a value model and the policy trained jointly on the soft Bellman equation (OREO).

OREO (Wang et al. 2024, Offline Reinforcement Learning for LLM Multi-Step Reasoning, arXiv 2412.16145;
paper and official code ``openrlhf/trainer/pcl_trainer.py`` read). Token-level MDP: state ``s_t`` =
prompt and response tokens before ``t``, action = token ``t``, a sparse terminal reward ``R`` (1 for a
right final answer, else 0). The KL-regularised optimum satisfies the soft Bellman equation
``V*(s_t) - V*(s_{t+1}) = r_t - beta log pi*(a_t|s_t)/pi_ref(a_t|s_t)``; telescoped,
``V*(s_t) = R - beta sum_{i>=t} d_i`` with ``d_i = log pi(a_i|s_i) - log pi_ref(a_i|s_i)``.

Data (``data.kind: lists``; a group = the K sampled responses of one prompt, each with its reward):
``list_scores`` [B, K] = ``R``; the per-token log-probs of policy and reference (``list_*_token_logps``,
``list_token_mask``); ``extras["list_values"]`` [B, K, T]: ``V_phi(s_t)`` of the value model for the
state before every response token, with gradient to the value model (:class:`dpokit.steps.value.ValueScorer`
fills it); for the step level also ``extras["token_step"]`` [B, K, T], the step index of every token
(-1 outside the response), as :mod:`dpokit.losses.process_reward` reads it.

The value loss holds the policy log-ratios fixed and the policy loss holds ``V_phi`` fixed, so their
sum trains both models in one backward pass, each with its own gradient.
"""

from __future__ import annotations

import torch

from .base import LossInputs, LossOutput
from .registry import Needs, register_loss

Tensor = torch.Tensor

LEVELS = ("token", "step", "response")
VALUES = "list_values"
TOKEN_STEP = "token_step"
SOURCE = ("Wang et al. 2024, Offline Reinforcement Learning for LLM Multi-Step Reasoning (OREO), arXiv 2412.16145, "
          "Eqs. 8-10; official code pcl_trainer.py (loss, dro_loss, traj_loss)")


def suffix_sums(x: Tensor) -> Tensor:
    """``S_t = sum_{i>=t} x_i`` along the last dimension."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])


def step_starts(token_step: Tensor, mask: Tensor) -> Tensor:
    """True at the first token of every step (where the step index changes), within ``mask``."""
    previous = torch.cat([torch.full_like(token_step[..., :1], -1), token_step[..., :-1]], -1)
    return mask & (token_step != previous)


def oreo_terms(values: Tensor, logratios: Tensor, rewards: Tensor, mask: Tensor, beta: float,
               level: str = "token", token_step: Tensor = None):
    """``(value loss, policy loss)`` per response ([...]: the leading dimensions of ``values``).

    ``values``, ``logratios`` ``d_t`` and ``mask``: [..., T]; ``rewards``: [...]; ``S_t`` = suffix sums of ``d``.

    * value (Eq. 8): ``mean_{t in states} (V(s_t) - R + beta sg[S_t])^2``; states = every token
      (token and response level) or the step starts (step level);
    * policy, token level (Eq. 9): ``mean_t (sg[V(s_t)] - R + beta d_t + sg[beta S_{t+1}])^2``;
    * policy, step level: for each step ``k`` (tokens ``i..j-1``):
      ``mean_k (sg[V(s_i)] - R + beta sum_{t=i}^{j-1} d_t + sg[beta S_j])^2``;
    * policy, response level (Eq. 10): ``(sg[V(s_0)] - R + beta S_0)^2``.
    """
    if level not in LEVELS:
        raise ValueError(f"oreo: level must be one of {', '.join(LEVELS)}, got {level!r}")
    m = mask.to(logratios.dtype)
    d = logratios * m
    R = rewards.to(d.dtype).unsqueeze(-1)
    S = suffix_sums(d)
    count = lambda w: w.sum(-1).clamp_min(1.0)  # noqa: E731
    if level == "step":
        if token_step is None:
            raise ValueError(f"oreo(level='step') needs extras[{TOKEN_STEP!r}], the step index of every token")
        states = step_starts(token_step.long(), mask.bool()).to(d.dtype)
    else:
        states = m
    value = (((values - R + beta * S.detach()) ** 2) * states).sum(-1) / count(states)
    v = values.detach()
    if level == "token":
        later = (S - d).detach()  # S_{t+1}
        policy = (((v - R + beta * d + beta * later) ** 2) * m).sum(-1) / count(m)
    elif level == "step":
        index = token_step.long().clamp_min(0)
        steps = int(index.max().item()) + 1 if index.numel() else 1
        # per step: its log-ratio sum (with gradient), the value at its start, and sg[S] after it
        step_sum = d.new_zeros(*d.shape[:-1], steps).scatter_add(-1, index, d)
        start_value = d.new_zeros(*d.shape[:-1], steps).scatter_add(-1, index, v * states)
        start_S = d.new_zeros(*d.shape[:-1], steps).scatter_add(-1, index, S.detach() * states)
        present = d.new_zeros(*d.shape[:-1], steps).scatter_add(-1, index, states)
        after = start_S - step_sum.detach()  # S_j = S_i - sum of the step
        policy = ((((start_value - R + beta * step_sum + beta * after) ** 2) * present).sum(-1)
                  / count(present))
    else:
        first = torch.zeros_like(m)
        first[..., 0] = 1.0
        policy = (((v - R + beta * S) ** 2) * first * m).sum(-1)
    return value, policy


def k3_kl(logratios: Tensor, mask: Tensor) -> Tensor:
    """Per-response mean of ``exp(-d_t) + d_t - 1`` (the k3 estimate of KL(pi || pi_ref) at the sampled tokens)."""
    m = mask.to(logratios.dtype)
    d = logratios * m
    return ((torch.exp(-d) + d - 1.0) * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def _needs(beta: float = 0.03, alpha: float = 0.01, value_weight: float = 1.0, level: str = "token") -> Needs:
    extras = (VALUES, TOKEN_STEP) if level == "step" else (VALUES,)
    return Needs(reference=True, data="lists", token_logps=True, extras=extras)


def _oreo(inputs: LossInputs, beta: float, alpha: float, value_weight: float, level: str) -> LossOutput:
    if level not in LEVELS:
        raise ValueError(f"oreo: level must be one of {', '.join(LEVELS)}, got {level!r}")
    if not beta > 0:
        raise ValueError(f"oreo: beta must be > 0, got {beta}")
    if alpha < 0 or value_weight < 0:
        raise ValueError(f"oreo: alpha and value_weight must be >= 0, got {alpha}, {value_weight}")
    inputs.require("list_policy_token_logps", "list_reference_token_logps", "list_token_mask", "list_scores",
                   "list_mask")
    if VALUES not in inputs.extras:
        raise ValueError(f"oreo needs extras[{VALUES!r}] [B, K, T], the value model's V(s_t) before every response "
                         "token (dpokit.steps.value.ValueScorer writes it)")
    mask = inputs.list_token_mask.bool() & inputs.list_mask.bool().unsqueeze(-1)
    d = inputs.list_policy_token_logps - inputs.list_reference_token_logps.detach()
    values = inputs.extras[VALUES].to(d.dtype)
    value, policy = oreo_terms(values, d, inputs.list_scores, mask, beta, level, inputs.extras.get(TOKEN_STEP))
    kl = k3_kl(d, mask)
    per_response = value_weight * value + policy + alpha * kl
    rows = inputs.list_mask.to(d.dtype)
    loss = (per_response * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)
    n = rows.sum().clamp_min(1.0)
    metrics = {"oreo/value_loss": (value * rows).sum().detach() / n, "oreo/policy_loss": (policy * rows).sum().detach() / n,
               "oreo/kl": (kl * rows).sum().detach() / n}
    return LossOutput(loss, metrics)


@register_loss("oreo", family="value", source=SOURCE, needs=_needs, verified="partial")
def oreo_loss(inputs: LossInputs, beta: float = 0.03, alpha: float = 0.01, value_weight: float = 1.0,
              level: str = "token") -> LossOutput:
    """OREO: value and policy on the soft Bellman equation, per response
    ``L = value_weight * L_V + L_pi + alpha * KL``, averaged over the real responses of each group.

    ``L_V = mean_t (V(s_t) - R + beta sg[S_t])^2`` (Eq. 8), ``S_t = sum_{i>=t} d_i``,
    ``d_i = log pi/pi_ref`` at token ``i``; ``L_pi`` by ``level``: ``token`` (Eq. 9,
    ``mean_t (sg[V(s_t)] - R + beta d_t + sg[beta S_{t+1}])^2``), ``step`` (one term per reasoning step,
    gradient through the step's own tokens), ``response`` (Eq. 10, ``(sg[V(s_0)] - R + beta S_0)^2``);
    ``KL = mean_t exp(-d_t) + d_t - 1`` at the response tokens (the k3 estimate). Defaults: the paper's
    ``beta = 0.03``, ``alpha = 0.01`` (its step-level runs use ``alpha = 0.1``, response-level ``0.3``).

    PARTIAL (``[partial]``): the regulariser is the k3 estimate at the data's tokens, where the entry read describes
    the code's ``--unbiased_kl`` as a full-vocabulary KL; both models step together on the summed loss
    (the code takes the value step first, then recomputes the policy loss); for the response level the
    value loss keeps every token state (which states the code's value loss uses with ``traj_loss`` was not
    established). Source: Wang et al. 2024, arXiv 2412.16145, Eqs. 8-10, official code ``pcl_trainer.py``.
    Shapes: list token tensors [B, K, T], ``list_scores`` [B, K]; returns loss [B].
    """
    return _oreo(inputs, beta, alpha, value_weight, level)
