"""ControlNet conditions: a frozen ``ControlNetModel`` of the pipeline feeds the denoiser its residuals.

A pipeline directory with a ``controlnet/`` folder (diffusers ``ControlNetModel``, safetensors) makes
every record carry a condition image (``condition_image``; :mod:`dpokit.data.conditions`). For each
scored batch the ControlNet runs once, under ``no_grad``, at the same ``(x_t, t, c)`` the policy and the
reference see:

    down, mid = controlnet(x_t, t, encoder_hidden_states=c, controlnet_cond=cond, conditioning_scale=s)
    eps_hat   = denoiser(x_t, t, encoder_hidden_states=c,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid)

as the diffusers ControlNet pipelines call a ``UNet2DConditionModel``. The ControlNet is frozen (the
only mode implemented: training it jointly is not), so its residuals are constants for the policy's
gradient and one ControlNet pass serves the policy and the reference. Condition images are RGB in
[0, 1] (the diffusers ControlNet training scripts' ``ToTensor()`` range), at the ControlNet's input
size: ``2^(len(conditioning_embedding_out_channels) - 1)`` times the sample (latent) size; for an SD
pipeline, the image size.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .data.conditions import CONTROL_KEY
from .diffusion_models import load_frozen_part
from .errors import ConfigError, DataError


def load_controlnet(root: str, dtype: Optional[torch.dtype] = None):
    """The pipeline's ``controlnet/`` (``ControlNetModel``), frozen; None when there is none."""
    return load_frozen_part(root, "controlnet", "ControlNetModel", dtype, " (for a UNet2DConditionModel denoiser)")


def check_denoiser(controlnet, denoiser) -> None:
    base = denoiser.get_base_model() if hasattr(denoiser, "get_base_model") else denoiser
    name = type(base).__name__
    if name != "UNet2DConditionModel":
        raise ConfigError(f"model.name_or_path: a controlnet/ conditions a UNet2DConditionModel, the denoiser "
                          f"is a {name}")
    if int(controlnet.config.in_channels) != int(base.config.in_channels):
        raise ConfigError(f"model.name_or_path: the ControlNet takes {controlnet.config.in_channels} sample "
                          f"channels, the denoiser {base.config.in_channels}")


class ControlNetResiduals:
    """Adds the frozen ControlNet's residuals to a batch's denoiser keywords (the scorer's ``control``)."""

    def __init__(self, controlnet, scale: float = 1.0):
        self.controlnet = controlnet.eval().requires_grad_(False)
        self.scale = float(scale)
        channels = controlnet.config.conditioning_embedding_out_channels
        self.factor = 2 ** (len(channels) - 1)
        self.channels = int(controlnet.config.conditioning_channels)

    def to(self, device):
        self.controlnet.to(device)
        return self

    def check(self, cond: torch.Tensor, x_t: torch.Tensor) -> None:
        want = tuple(s * self.factor for s in x_t.shape[-2:])
        if tuple(cond.shape[-2:]) != want or cond.shape[1] != self.channels:
            raise ValueError(f"condition images are {cond.shape[1]}x{cond.shape[-2]}x{cond.shape[-1]} but the "
                             f"ControlNet needs {self.channels}x{want[0]}x{want[1]} for samples of "
                             f"{x_t.shape[-2]}x{x_t.shape[-1]} (its conditioning embedding downsamples by "
                             f"{self.factor}): set diffusion.image_size so images and conditions match it")

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, conditions: Dict[str, torch.Tensor]) -> Dict:
        conditions = dict(conditions)
        cond = conditions.pop(CONTROL_KEY, None)
        if cond is None:
            raise ValueError("the pipeline has a controlnet/ but the batch holds no condition images "
                             "(give each record a 'condition_image')")
        self.check(cond, x_t)
        keywords = {k: conditions[k] for k in ("encoder_hidden_states", "class_labels") if k in conditions}
        dtype = next(self.controlnet.parameters()).dtype
        with torch.no_grad():
            down, mid = self.controlnet(x_t.to(dtype), t, controlnet_cond=cond.to(x_t.device, dtype),
                                        conditioning_scale=self.scale, return_dict=False,
                                        **{k: v.to(dtype) if v.is_floating_point() else v
                                           for k, v in keywords.items()})
        conditions["down_block_additional_residuals"] = tuple(r.to(x_t.dtype) for r in down)
        conditions["mid_block_additional_residual"] = mid.to(x_t.dtype)
        return conditions


def check_condition_images(examples, controlled: bool) -> None:
    """Every example has a condition image when the pipeline has a ControlNet; none has one otherwise."""
    for ex in examples:
        has = getattr(ex, "condition_image", None) is not None
        if controlled and not has:
            raise DataError(ex.location, "condition_image", "missing condition image",
                            "the pipeline has a controlnet/: give each record a 'condition_image'")
        if not controlled and has:
            raise DataError(ex.location, "condition_image", "the record has a condition image but the pipeline "
                            "has no controlnet/", "add a ControlNetModel under controlnet/, or drop the column")
