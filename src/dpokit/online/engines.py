"""Scorer wrappers for round strategies whose loss needs more than the pair's own log-probs.

A strategy passes one as the Trainer's ``scorer_wrapper``; each wraps the LM scorer and adds
``LossInputs.extras``, so the loss stays a pure function of its inputs.
"""

from __future__ import annotations

import contextlib
from typing import Dict

import torch

from ..data.collate import Batch


class SideRowsEngine:
    """Adds log-probs of extra completions per example ("side rows", keyed by the example's
    ``side_id`` extra) to ``LossInputs.extras``: ``side_policy_logps`` (with gradient),
    ``side_reference_logps`` and ``side_mask`` [B, K]."""

    def __init__(self, engine, rows: Dict[int, tuple]):
        self.engine = engine
        self.rows = rows

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        inputs = self.engine.loss_inputs(policy, batch, reference)
        ids = [int(i) for i in batch.extras["side_id"].tolist()]
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise ValueError(f"no online samples for side_id {missing[0]}")
        groups = [self.rows[i] for i in ids]
        sizes = [len(completions) for _, completions in groups]
        lp = self.engine.token_logprobs(policy, groups)
        ref = reference.token_logprobs(self.engine, Batch("lists", groups, batch.index), cache=False)
        device = inputs.policy_chosen_logps.device
        width = max(sizes)
        mask = torch.arange(width, device=device).unsqueeze(0) < torch.tensor(sizes, device=device).unsqueeze(1)
        policy_logps = lp.sums.new_zeros(len(groups), width).masked_scatter(mask, lp.sums)
        reference_logps = ref.sums.new_zeros(len(groups), width).masked_scatter(mask, ref.sums.to(device))
        inputs.extras.update(side_policy_logps=policy_logps, side_reference_logps=reference_logps,
                             side_mask=mask.to(policy_logps.dtype))
        return inputs


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run ``model`` (PEFT) with only LoRA module ``name`` active. ``requires_grad`` is left as it is,
    and restored on exit: PEFT's ``disable_adapter()`` (the reference forward) re-activates adapters
    on exit through ``set_adapter``, which freezes every module it does not activate."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [m._active_adapter for m in layers]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for m in layers:
        m._active_adapter = [name]
    try:
        yield model
    finally:
        for m, value in zip(layers, saved):
            m._active_adapter = value
        for p, flag in flags:
            p.requires_grad_(flag)


class TwoModuleEngine:
    """OFS-DPO: the pair's log-probs under LoRA module ``first`` fill the usual fields; module
    ``second``'s (with gradient) go to ``extras["ofs_other_chosen_logps"/"ofs_other_rejected_logps"]``."""

    def __init__(self, engine, first: str, second: str):
        self.engine, self.first, self.second = engine, first, second

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        with active_adapter(policy, self.first):
            inputs = self.engine.loss_inputs(policy, batch, reference)
        with active_adapter(policy, self.second):
            sums = self.engine.token_logprobs(policy, batch.groups).sums
        inputs.extras.update(ofs_other_chosen_logps=sums[0::2], ofs_other_rejected_logps=sums[1::2])
        return inputs
