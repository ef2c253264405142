"""Curry-DPO curricula in the trainer: a staged batch order plus a reference-update callback.

Curry-DPO (Pattnaik et al. 2024, arXiv 2403.07230): pairs are ordered easy to hard by score gap and
cut into stages (:func:`dpokit.data.build.curriculum_stages`); stage k is trained with the reference
model replaced by the policy that finished stage k-1. Here:

* :class:`CurriculumBatchOrder` yields, in every epoch, the batches of stage 0, then of stage 1, ...
  (batches never mix stages; each stage is shuffled with ``seed + epoch`` and repeated
  ``epochs_per_stage`` times, reshuffled each time). ``train.epochs`` > 1 repeats the whole curriculum.
* :func:`curriculum_reference_callback` copies the policy's weights into the reference model after
  the optimizer step that finishes a stage. With ``train.grad_accum`` > 1 an accumulation window can
  straddle a stage boundary; the copy then happens after that window's step.

The reference must be a separate model (``reference.kind`` copy or path; not precomputed, not the
LoRA-disabled policy). Resuming inside a curriculum restores the policy but not the reference weights:
the reference becomes the resumed policy (a warning says so).
"""

from __future__ import annotations

import logging
from typing import List, Sequence

import torch

logger = logging.getLogger("dpokit")


class CurriculumBatchOrder:
    """Batches of example positions, stage by stage; same interface as ``EpochBatchOrder``."""

    def __init__(self, stage_of: Sequence[int], batch_size: int, seed: int, num_stages: int,
                 epochs_per_stage: int = 1):
        self.stage_of = list(stage_of)
        self.batch_size = batch_size
        self.seed = seed
        self.num_stages = num_stages
        self.epochs_per_stage = epochs_per_stage

    def _stage_batches(self, epoch: int) -> List[List[List[int]]]:
        out = []
        for stage in range(self.num_stages):
            members = [i for i, s in enumerate(self.stage_of) if s == stage]
            batches: List[List[int]] = []
            for repeat in range(self.epochs_per_stage):
                generator = torch.Generator().manual_seed(
                    self.seed + epoch * 1_000_003 + stage * 10_007 + repeat)
                perm = torch.randperm(len(members), generator=generator).tolist()
                shuffled = [members[k] for k in perm]
                batches.extend(shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size))
            out.append(batches)
        return out

    def batches(self, epoch: int) -> List[List[int]]:
        return [b for stage in self._stage_batches(epoch) for b in stage]

    def stage_ends(self, epoch: int) -> List[int]:
        """Number of batches (over all processes) up to the end of each stage."""
        ends, total = [], 0
        for stage in self._stage_batches(epoch):
            total += len(stage)
            ends.append(total)
        return ends

    def __len__(self) -> int:
        return self.stage_ends(0)[-1] if self.num_stages else 0


@torch.no_grad()
def copy_policy_to_reference(trainer) -> None:
    from ..reference import AdapterDisabledReference, ModelReference

    reference = trainer.reference
    if not isinstance(reference, ModelReference) or isinstance(reference, AdapterDisabledReference):
        raise ValueError("a curriculum needs a separate reference model (reference.kind copy or path, "
                         "without reference.precompute)")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    ref_params = dict(reference.model.named_parameters())
    for name, param in policy.named_parameters():
        target = ref_params.get(name)
        if target is None:
            raise ValueError(f"curriculum: the reference model has no parameter {name!r}")
        target.copy_(param.detach().to(target.dtype))


class CurriculumReferenceCallback:
    """After the optimizer step that finishes a stage: reference <- policy (see the module docstring).

    ``updates`` lists the optimizer steps after which the reference was replaced.
    """

    def __init__(self, order: CurriculumBatchOrder):
        self.order = order
        self.updates: List[int] = []
        self._epoch = None
        self._finished = 0
        self._first_call = True

    def __call__(self, trainer, step: int) -> None:
        epoch, micro = trainer.state["epoch"], trainer.state["micro"]
        plan = trainer.epoch_plan(epoch)  # global batches (all processes step through the same list)
        ends = [plan.micro_after(end) for end in self.order.stage_ends(epoch)]
        finished = sum(1 for end in ends if micro >= end)
        if self._epoch != epoch:
            self._epoch, self._finished = epoch, 0
        if self._first_call and step > 1:  # resumed: the reference weights were not restored
            self._finished = finished
            if finished > 0:
                logger.warning("curriculum: resumed inside stage %d; the reference model is now the resumed "
                               "policy, not the policy that finished stage %d", finished, finished - 1)
                copy_policy_to_reference(trainer)
        self._first_call = False
        if finished > self._finished:
            copy_policy_to_reference(trainer)
            logger.info("curriculum: stage %d of %d finished at step %d; reference <- policy",
                        finished, len(ends), step)
            self.updates.append(step)
            self._finished = finished


def curriculum_reference_callback(order: CurriculumBatchOrder) -> CurriculumReferenceCallback:
    return CurriculumReferenceCallback(order)
