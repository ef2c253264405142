"""The callbacks a run's config asks for, each built by its owner.

A callback is ``callback(trainer, step)``, called after every optimizer step. The trainer calls
:func:`config_callbacks` once, before any model loads (so bad options fail first), and knows none of
them by name:

* ``train.monitor``: over-optimisation indicators at eval steps (:mod:`dpokit.train.monitor`);
* ``reference.sync_every``: TR-DPO's reference update (:func:`reference_sync`).

Curry-DPO's reference <- policy at each stage end comes with its batch order
(:mod:`dpokit.train.curriculum`), which exists once the data is loaded.
"""

from __future__ import annotations

from typing import Callable, List

import torch

from ..reference import AdapterDisabledReference, ModelReference
from .monitor import monitor_callback

Callback = Callable[..., None]


def config_callbacks(config) -> List[Callback]:
    """The callbacks ``config`` enables, in the order they run after each step."""
    callbacks: List[Callback] = []
    if config.train.monitor:
        callbacks.append(monitor_callback(config.train.monitor))
    if config.reference.sync_every:
        callbacks.append(reference_sync(config.reference.sync_every, config.reference.sync_alpha))
    return callbacks


def reference_sync(every: int, alpha: float) -> Callback:
    """TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): every ``every`` optimizer steps,
    ``theta_ref <- alpha * theta + (1 - alpha) * theta_ref`` (``alpha = 1``: hard update)."""

    def callback(trainer, step: int) -> None:
        if step % every:
            return
        reference = trainer.reference
        if not isinstance(reference, ModelReference) or isinstance(reference, AdapterDisabledReference):
            raise ValueError("reference.sync_every needs a separate reference model (kind copy or path)")
        policy = trainer.accelerator.unwrap_model(trainer.model)
        with torch.no_grad():
            ref_params = dict(reference.model.named_parameters())
            for name, param in policy.named_parameters():
                target = ref_params.get(name)
                if target is not None:
                    target.mul_(1.0 - alpha).add_(param.detach().to(target.dtype), alpha=alpha)

    return callback
