"""Implicit-reward evaluation of a policy against a reference on held-out preference pairs."""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Sequence

import torch

from ..data import collate
from ..scoring.lm.engine import LogProbEngine
from ..losses import Needs


def preference_accuracy(margins: torch.Tensor) -> float:
    """Share of pairs whose implicit reward prefers the chosen completion; an exact tie counts half
    (so a policy identical to its reference scores 0.5, not 0)."""
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


@torch.no_grad()
def evaluate_pairs(policy, reference, examples: Sequence, pad_token_id: int, loss_fn=None, beta: float = 0.1,
                   batch_size: int = 16, chunk_size: int = 1024, return_margins: bool = False,
                   engine_class=LogProbEngine, batch_fn=collate) -> Dict[str, float]:
    """``preference_accuracy``, ``reward_margin_mean`` (of ``beta * margin``), ``loss`` (when a loss is
    given; its state is not updated), ``num_pairs``; with ``return_margins`` also ``margins``, the
    per-pair ``beta * margin`` tensor. ``engine_class`` / ``batch_fn``: how the pairs are scored and
    batched (a vision-language model: ``VisionLogProbEngine`` / ``collate_vision``).

    The implicit reward is ``beta * (lp(y) - lr(y))`` with a reference and ``beta * lp(y)/|y|`` (the
    token mean that reference-free losses use) without one.
    """
    needs = Needs(reference=reference is not None)
    if loss_fn is not None:
        loss_fn.training = False
        needs = replace(loss_fn.needs, reference=loss_fn.needs.reference and reference is not None)
        if loss_fn.needs.reference and reference is None:
            raise ValueError(f"loss {loss_fn.name!r} needs a reference model (--ref)")
    engine = engine_class(needs, pad_token_id, chunk_size=chunk_size)
    chosen, rejected, losses, lp_w, lp_l = [], [], [], [], []
    for start in range(0, len(examples), batch_size):
        batch = batch_fn(examples[start:start + batch_size], "pairs")
        inputs = engine.loss_inputs(policy, batch, reference)
        if reference is not None:
            chosen.append(inputs.chosen_logratios().float().cpu())
            rejected.append(inputs.rejected_logratios().float().cpu())
        else:
            chosen.append(inputs.mean_logps("chosen").float().cpu())
            rejected.append(inputs.mean_logps("rejected").float().cpu())
        lp_w.append(inputs.policy_chosen_logps.float().cpu())
        lp_l.append(inputs.policy_rejected_logps.float().cpu())
        if loss_fn is not None:
            losses.append(loss_fn(inputs).loss.float().cpu())
    margins = beta * (torch.cat(chosen) - torch.cat(rejected))
    result = {
        "preference_accuracy": preference_accuracy(margins),
        "reward_margin_mean": float(margins.mean()),
        "reward_margin_std": float(margins.std()) if len(margins) > 1 else 0.0,
        "num_pairs": int(len(margins)),
        "logps_chosen_mean": float(torch.cat(lp_w).mean()),
        "logps_rejected_mean": float(torch.cat(lp_l).mean()),
    }
    if losses:
        result["loss"] = float(torch.cat(losses).mean())
    if return_margins:
        result["margins"] = margins
    return result
