"""Samples of a denoiser from fixed noise: the policy and the reference side by side in the report.

``sample(model, scheduler, conditions, noise, steps)`` runs a deterministic sampler from the initial
noise ``noise`` [N, *S] (images [N, C, H, W] or clips [N, C, F, H, W]):

* flow matching (``FlowMatchEulerDiscreteScheduler``): Euler steps of the predicted velocity on the
  scheduler's own grid (``set_timesteps(steps)``), the denoiser given ``sigma * T`` as in training;
* otherwise DDIM (eta 0) built from the scheduler's config, with the predicted ``x0`` clipped to
  [-1, 1] and the noise re-derived from it (``use_clipped_model_output=True``; see
  :func:`dpokit.tasks.bimodal.ddim_sample` for why).

``write_run_samples(trainer, directory)`` samples a few conditions of a ``model.kind: diffusion`` run
with the trained policy and with the reference from the same noise and writes them with
:func:`dpokit.eval.sample_grids.save_sample_grids` (``dpokit report`` shows them).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch

from .scoring.diffusion import predict
from .scoring.diffusion.noise import prediction_type

logger = logging.getLogger("dpokit")

SAMPLE_SEED_OFFSET = 4242  # the fixed noise of the run's samples: train.seed + this


@torch.no_grad()
def sample(model, scheduler, conditions: Dict[str, torch.Tensor], noise: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Deterministic samples from ``noise`` [N, *S]; ``conditions`` have leading dimension N."""
    import diffusers

    if prediction_type(scheduler) == "flow":
        sampler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        step_kwargs = {}
    else:
        sampler = diffusers.DDIMScheduler.from_config(scheduler.config)
        step_kwargs = {"use_clipped_model_output": True}
    sampler.set_timesteps(steps)
    was_training = model.training
    model.eval()
    try:
        x = noise
        for t in sampler.timesteps:
            out = predict(model, x, t.to(x.device).expand(x.shape[0]), conditions)
            x = sampler.step(out, t, x, **step_kwargs).prev_sample
    finally:
        model.train(was_training)
    return x.clamp(-1, 1)


def _captions(examples, count: int) -> List[str]:
    seen: List[str] = []
    for ex in examples:
        if ex.caption not in seen:
            seen.append(ex.caption)
        if len(seen) >= count:
            break
    return seen


def write_run_samples(trainer, directory: str) -> Optional[str]:
    """Policy and reference samples of up to ``diffusion.sample_grids`` captions (eval examples first)
    from the same fixed noise; returns the index path, or None when there is nothing to draw (setting
    0, no examples, or samples that are not RGB pixels, e.g. VAE latents)."""
    from .eval.sample_grids import save_sample_grids

    d = trainer.config.diffusion
    count = int(getattr(d, "sample_grids", 0) or 0)
    examples = list(trainer.eval_examples or []) + list(trainer.train_examples or [])
    if count <= 0 or not examples:
        return None
    shape = tuple(examples[0].images.shape[1:])
    if shape[0] != 3:
        logger.info("sample grids skipped: samples of %d channels are not RGB pixels", shape[0])
        return None
    captions = _captions(examples, count)
    device = trainer.accelerator.device
    generator = torch.Generator().manual_seed(int(trainer.config.train.seed) + SAMPLE_SEED_OFFSET)
    noise = torch.randn((len(captions),) + shape, generator=generator).to(device)
    conditions = {k: v.to(device) for k, v in trainer.tokenizer.conditioner(captions).items()}
    scheduler, steps = trainer.tokenizer.scheduler, int(getattr(d, "sample_steps", 20))
    policy = sample(trainer.accelerator.unwrap_model(trainer.model), scheduler, conditions, noise, steps).cpu()
    reference = None
    if trainer.reference is not None and hasattr(trainer.reference, "active"):
        with trainer.reference.active() as model:
            reference = sample(model, scheduler, conditions, noise, steps).cpu()
    return save_sample_grids(directory, captions, policy, reference,
                             {"seed": int(trainer.config.train.seed) + SAMPLE_SEED_OFFSET, "steps": steps})
