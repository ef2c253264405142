"""The optional parts of a diffusion pipeline directory: ``vae/`` (latent space) and ``controlnet/``.

``load_parts`` loads them next to the denoiser (:class:`dpokit.diffusion_family.DiffusionAssets` holds
them); ``prepare_examples`` checks the condition images against the pipeline and, with a VAE,
replaces every example's pixels by cached latents (:mod:`dpokit.scoring.diffusion.latents`): the
main process encodes what the cache lacks and writes it, the others then read it.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .diffusion_control import ControlNetResiduals, check_condition_images, check_denoiser, load_controlnet
from .errors import ConfigError
from .scoring.diffusion.latents import check_latent_channels, encode_examples, load_vae

logger = logging.getLogger("dpokit")


def check_config(diffusion) -> None:
    if int(diffusion.vae_batch_size) < 1:
        raise ConfigError(f"diffusion.vae_batch_size: must be >= 1, got {diffusion.vae_batch_size}")


def load_parts(root: str, diffusion, denoiser, dtype: Optional[torch.dtype] = None) -> Tuple[Any, Any]:
    """``(vae or None, ControlNetResiduals or None)`` of the pipeline at ``root``. The VAE stays in
    float32 (it encodes each image once); ``diffusion.vae: none`` trains in pixel space."""
    if diffusion.vae not in ("auto", "none"):
        raise ConfigError(f"diffusion.vae: {diffusion.vae!r} is not one of auto, none")
    vae = load_vae(root)
    if vae is not None and diffusion.vae == "none":
        channels = getattr(getattr(denoiser, "config", None), "in_channels", 3)
        if channels != 3:
            raise ConfigError(f"diffusion.vae: none trains on RGB pixels, but the denoiser takes {channels} "
                              f"channels (the VAE's latents): use diffusion.vae: auto")
        vae = None
    if vae is not None:
        check_latent_channels(vae, denoiser)
    controlnet = load_controlnet(root, dtype)
    control = None
    if controlnet is not None:
        check_denoiser(controlnet, denoiser)
        control = ControlNetResiduals(controlnet, diffusion.controlnet_scale)
    return vae, control


def prepare_examples(trainer, examples: Sequence[Any]) -> Dict[str, int]:
    """Condition checks, then latents for ``examples`` (in place) when the pipeline has a VAE."""
    assets = trainer.tokenizer
    control, vae = getattr(assets, "control", None), getattr(assets, "vae", None)
    check_condition_images(examples, control is not None)
    if control is not None:
        control.to(trainer.accelerator.device)
    if vae is None:
        return {}
    d = trainer.config.diffusion
    vae.to(trainer.accelerator.device)
    report: Dict[str, int] = {}
    if trainer.is_main:  # fills the cache
        report = encode_examples(examples, vae, trainer.output_dir, trainer.config.train.seed, d.latent_sample,
                                 d.vae_batch_size, write=True)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_main:  # reads it
        report = encode_examples(examples, vae, trainer.output_dir, trainer.config.train.seed, d.latent_sample,
                                 d.vae_batch_size, write=False)
    vae.to("cpu")
    return report
