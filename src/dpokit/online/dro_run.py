"""``dpokit train`` with ``data.kind: expert``: the Diffusion-DRO online loop from a YAML config.

Positives-only data (expert images with captions, :mod:`dpokit.data.experts`) train a
``model.kind: diffusion`` denoiser with :class:`dpokit.online.diffusion_dro.DiffusionDRO`: the
negatives are the policy's own samples (lagged copy, replay buffer), so the pairwise trainer loop
does not run. What the config sets:

* ``loss: {name: diffusion_dro, margin: ...}`` (the only loss this loop trains);
* ``train.max_steps`` (required: the loop counts steps, not epochs), ``train.batch_size`` (pairs per
  step), ``train.lr``, ``train.weight_decay``, ``train.max_grad_norm``, ``train.seed``,
  ``train.log_every`` (lines of ``metrics.jsonl``), ``train.output_dir``;
* ``diffusion.dro``: the loop's own options (:class:`~dpokit.online.diffusion_dro.DROSettings`):
  ``buffer_size``, ``buffer_batch_size``, ``buffer_sample_steps``, ``buffer_update_steps``,
  ``buffer_num_inference_steps``, ``buffer_perturb_timesteps``.

Output: ``metrics.jsonl`` (one line per ``log_every`` steps), ``final/`` as every diffusion run
writes it (:func:`dpokit.diffusion_family.write_final`, loadable with diffusers) and
``dro_run.json`` (settings, expert count, lagged-copy refreshes). A latent pipeline (``vae/``, with
``diffusion.vae: auto``) trains on the experts' VAE latents (``diffusion.latent_sample``, cached under
``latent_cache/`` as for pair runs).
Refused [partial]: ``--resume`` (the loop writes no checkpoints), an eval set, gradient
accumulation, ControlNet, video denoisers,
``diffusion.x_t`` other than ``forward``, a reference other than a frozen copy, online rounds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any, Dict

from ..errors import ConfigError
from .diffusion_dro import DROSettings

logger = logging.getLogger("dpokit")

LOOP_KEYS = ("buffer_size", "buffer_batch_size", "buffer_sample_steps", "buffer_update_steps",
             "buffer_num_inference_steps", "buffer_perturb_timesteps")
FROM_CONFIG = {"margin": "loss.margin", "lr": "train.lr", "weight_decay": "train.weight_decay",
               "batch_size": "train.batch_size", "max_grad_norm": "train.max_grad_norm", "seed": "train.seed"}


def dro_settings(config) -> DROSettings:
    """The loop's settings: ``diffusion.dro`` plus the keys the rest of the config owns."""
    own = dict(config.diffusion.dro or {})
    for key in own:
        if key in FROM_CONFIG:
            raise ConfigError(f"diffusion.dro.{key}: set {FROM_CONFIG[key]} instead")
        if key not in LOOP_KEYS:
            raise ConfigError(f"diffusion.dro.{key}: unknown option; known: {', '.join(LOOP_KEYS)}")
    t = config.train
    values: Dict[str, Any] = {"margin": config.loss.get("margin", DROSettings.margin), "lr": t.lr,
                              "weight_decay": t.weight_decay, "batch_size": t.batch_size,
                              "max_grad_norm": t.max_grad_norm or 0.0, "seed": t.seed, **own}
    try:
        return DROSettings.from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"diffusion.dro: {err}") from None


def check(config, loss) -> None:
    """Everything the loop refuses, before any model loads (called by :func:`dpokit.preflight.check_run`)."""
    from ..families import model_family

    if config.model.kind != "diffusion":
        raise ConfigError(f"data.kind expert trains a diffusion denoiser (model.kind: diffusion), not {config.model.kind!r}")
    if loss.name != "diffusion_dro":
        raise ConfigError(f"data.kind expert: the Diffusion-DRO loop trains loss diffusion_dro, not {loss.name!r}")
    refused = [
        (bool(config.online.strategy), "online.strategy: online rounds do not take expert data"),
        (not config.train.max_steps, "train.max_steps: required with data.kind expert (the loop counts steps)"),
        (bool(config.data.eval) or config.data.eval_fraction > 0,
         "data.eval / data.eval_fraction: the Diffusion-DRO loop has no evaluation pass"),
        (config.train.grad_accum != 1, "train.grad_accum: gradient accumulation is not implemented in the loop"),
        (config.diffusion.x_t != "forward", "diffusion.x_t: the loop noises experts forward only"),
        (config.reference.kind not in ("auto", "copy") or bool(config.reference.precompute),
         "reference: the loop's reference is a frozen copy of the initial denoiser (kind auto or copy)"),
        (config.train.save_every > 0, "train.save_every: the loop writes no checkpoints, only final/"),
        (config.train.mixed_precision in ("bf16", "fp16"),
         "train.mixed_precision: the loop runs in model.dtype (set mixed_precision: no)"),
    ]
    for bad, message in refused:
        if bad:
            raise ConfigError(f"data.kind expert: {message}")
    dro_settings(config)
    model_family(config.model.kind).check(config)


def run(config, resume: bool = False) -> Dict[str, Any]:
    """Train, log, write ``final/``; returns ``{"status": "completed", "step": n, ...}``."""
    import torch

    from ..data.experts import load_expert_images
    from ..diffusion_family import write_final
    from ..families import model_family
    from ..paths import safe_join
    from ..scoring.diffusion.latents import encode_examples
    from .diffusion_dro import DiffusionDRO

    if resume:
        raise ConfigError("--resume: the Diffusion-DRO loop (data.kind expert) writes no checkpoints; "
                          "start the run again")
    settings = dro_settings(config)
    torch.manual_seed(config.train.seed)
    model, assets = model_family("diffusion").load_policy(config)
    for bad, what in ((assets.control is not None, "a ControlNet pipeline"), (assets.video, "a video denoiser")):
        if bad:
            raise ConfigError(f"data.kind expert: the Diffusion-DRO loop does not serve {what} [partial]")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    examples, report = load_expert_images(config.data.train, config.diffusion.image_size, config.data.limit)
    out = config.train.output_dir
    os.makedirs(out, exist_ok=True)
    if assets.vae is not None:  # a latent pipeline: the experts become (cached) VAE latents
        d = config.diffusion
        assets.vae.to(device)
        report["latents"] = encode_examples(examples, assets.vae, out, config.train.seed, d.latent_sample,
                                            d.vae_batch_size, write=True)
        assets.vae.to("cpu")
    experts = torch.cat([ex.images for ex in examples]).to(device)
    assets.conditioner.to(device)
    conditions = {k: v.to(device) for k, v in assets.conditioner([ex.caption for ex in examples]).items()}
    model.to(device)
    trainer = DiffusionDRO(model, assets.scheduler, experts, conditions, settings)
    metrics = safe_join(out, "metrics.jsonl")
    open(metrics, "w").close()  # a fresh run: no lines of an earlier one
    logger.info("Diffusion-DRO: %d expert images, %d steps", len(examples), config.train.max_steps)
    for _ in range(config.train.max_steps):
        row = trainer.train_step()
        if row["step"] % config.train.log_every == 0 or row["step"] == config.train.max_steps:
            with open(metrics, "a") as handle:
                handle.write(json.dumps({**row, "lagged_refreshes": len(trainer.refreshes)}) + "\n")
    final = write_final(assets, model, safe_join(out, "final"))
    summary = {"settings": asdict(settings), "experts": report["records"], "latents": report.get("latents"),
               "steps": trainer.step, "lagged_refreshes": trainer.refreshes}
    with open(safe_join(out, "dro_run.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return {"status": "completed", "step": trainer.step, "final": final}
