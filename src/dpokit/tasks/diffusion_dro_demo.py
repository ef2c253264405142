"""Diffusion-DRO in ``dpokit demo --modality diffusion --loss diffusion_dro``: positives only.

The expert data are fresh task images of the preferred mode only (mode A, or mode B with
``prefer="B"``), ``experts_per_class`` per class; the negatives are the model's own online samples
(:class:`dpokit.online.diffusion_dro.DiffusionDRO`: lagged copy, perturbed DPMSolver++ trajectories,
replay buffer), the pretrained model the frozen reference. ``--hparam`` sets the loss's ``margin``
and any :class:`~dpokit.online.diffusion_dro.DROSettings` field (``buffer_update_steps=8``, ...).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch

from ..online.diffusion_dro import DiffusionDRO, DROSettings
from .bimodal import BimodalTask


def train_dro(model, scheduler, task: BimodalTask, settings, hparams: Dict[str, Any],
              log: Callable = print) -> Tuple[List[Dict[str, float]], int]:
    """Train ``model`` in place; returns (history, number of expert images)."""
    options = {"batch_size": settings.dro_batch, "buffer_size": settings.dro_batch,
               "buffer_batch_size": settings.dro_batch, "lr": settings.dro_lr, "seed": settings.seed,
               "buffer_num_inference_steps": settings.sample_steps, **hparams}
    dro = DROSettings.from_dict(options)
    generator = torch.Generator().manual_seed(settings.seed + 7)
    classes = torch.arange(task.num_classes).repeat_interleave(settings.experts_per_class)
    experts = task.sample(classes, generator, mode_a_fraction=1.0 if settings.prefer == "A" else 0.0)
    trainer = DiffusionDRO(model, scheduler, experts, {"class_labels": classes}, dro)
    history = []
    for _ in range(settings.dro_steps):
        row = trainer.train_step()
        history.append(row)
        if row["step"] % max(1, settings.dro_steps // 4) == 0:
            log(f"      step {row['step']}: loss {row['loss']:.5f}  mse_expert-ref {row['mse_expert_minus_ref']:+.5f}  "
                f"mse_policy-ref {row['mse_policy_minus_ref']:+.5f}  lagged copy refreshed {len(trainer.refreshes)}x")
    return history, len(experts)


# losses whose demo trains on positives with online negatives instead of pairs
EXPERT_METHODS: Dict[str, Callable] = {"diffusion_dro": train_dro}
