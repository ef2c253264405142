"""Small numerically careful helpers shared by the loss modules (not losses themselves)."""

from __future__ import annotations

import math
from typing import Optional

import torch

Tensor = torch.Tensor

# Largest exponent fed to ``exp`` per dtype: exp(cap) stays finite with room for a few products.
# fp16/bf16/fp32 values follow TRL's f-divergence clamp (11 for fp16, 80 otherwise); fp64 gets 700.
_EXP_CAP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 700.0}

_LOG_HALF = -math.log(2.0)


def exp_cap(dtype: torch.dtype) -> float:
    return _EXP_CAP.get(dtype, 80.0)


def capped_exp(x: Tensor) -> Tensor:
    """``exp(min(x, cap))`` with a dtype-dependent cap, so the result never overflows to inf."""
    return torch.exp(x.clamp(max=exp_cap(x.dtype)))


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable over the whole range (Maechler 2012).

    Each branch only sees inputs on its own side of ``-log 2``, so neither produces inf/nan
    gradients that ``torch.where`` would otherwise propagate.
    """
    small = x < _LOG_HALF
    x_small = torch.where(small, x, torch.full_like(x, _LOG_HALF))
    x_large = torch.where(small, torch.full_like(x, _LOG_HALF), x)
    return torch.where(small, torch.log1p(-torch.exp(x_small)), torch.log(-torch.expm1(x_large)))


def log_odds(avg_logp: Tensor, eps: float = 1e-7) -> Tensor:
    """``log(p / (1 - p))`` for ``p = exp(avg_logp)``; ``avg_logp`` is clamped to ``<= -eps``."""
    a = avg_logp.clamp(max=-eps)
    return a - log1mexp(a)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask.to(values.dtype)).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1)


def nll_term(inputs, reduction: str, include_prompt: bool = False) -> Tensor:
    """Negative log-likelihood of the chosen completion as a per-example tensor [B].

    * ``"token_mean"``: cross-entropy pooled over every chosen token in the batch, as
      ``nn.CrossEntropyLoss`` computes it in TRL's CPO/ORPO trainers and the official ORPO code.
      Returned per example as ``-lp_w * B / sum_j |y_w_j|`` so that the batch mean equals it.
    * ``"example_mean"``: per-example token mean ``-lp_w / |y_w|`` (then averaged over the batch).
    * ``"sum"``: per-example sequence NLL ``-lp_w``.

    ``include_prompt=True`` counts the prompt tokens after the first as well (``lp_w`` becomes
    ``lp(x) + lp_w`` and ``|y_w|`` becomes ``|x| - 1 + |y_w|``): the NLL of the whole chosen sequence.
    """
    inputs.require("policy_chosen_logps")
    lp = inputs.policy_chosen_logps
    if include_prompt:
        inputs.require("policy_prompt_logps", "prompt_lengths")
        lp = lp + inputs.policy_prompt_logps.to(lp.dtype)
    if reduction == "sum":
        return -lp
    inputs.require("chosen_lengths")
    lengths = inputs.chosen_lengths.to(lp.dtype)
    if include_prompt:
        lengths = lengths + inputs.prompt_lengths.to(lp.dtype)
    if reduction == "example_mean":
        return -lp / lengths.clamp_min(1)
    if reduction == "token_mean":
        return -lp * lp.shape[0] / lengths.sum().clamp_min(1)
    raise ValueError(f"nll reduction must be 'token_mean', 'example_mean' or 'sum', got {reduction!r}")


def optional_extra(inputs, key: str) -> Optional[Tensor]:
    return inputs.extras.get(key) if inputs.extras else None


def require_extra(inputs, key: str, loss: str) -> Tensor:
    value = optional_extra(inputs, key)
    if value is None:
        raise ValueError(f"{loss} needs LossInputs.extras[{key!r}] but it was not provided")
    return value
