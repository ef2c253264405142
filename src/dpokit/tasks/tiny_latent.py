"""Tiny VAE and ControlNet parts for the local test pipelines, and data with condition images.

``save_tiny_parts`` writes ``vae/`` (an ``AutoencoderKL`` with 2 blocks: 2x downsampling, 4 latent
channels, 44k parameters; next to an SD3 transformer, SD3's ``shift_factor`` 0.0609 and
``scaling_factor`` 1.5305) and ``controlnet/`` (``ControlNetModel.from_unet`` of the pipeline's UNet; its
conditioning embedding downsamples as the VAE does, so condition images are image-sized; its zero
convolutions are set to small random values so that it changes the UNet's output, as a trained one
would). ``save_condition_pairs`` and ``save_bide_pairs`` write random-image records with condition
images (plain pairs, and BideDPO's text and condition pairs).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import torch

from ..paths import safe_join

LATENT_CHANNELS = 4
CAPTIONS = ("a red square", "a blue circle", "a green bar")


def tiny_autoencoder():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                         layers_per_block=1, norm_num_groups=8, sample_size=16)


def tiny_controlnet(unet, downsample: int = 1, seed: int = 0):
    """``ControlNetModel.from_unet(unet)`` whose condition embedding downsamples by ``downsample`` (1 or 2)."""
    from diffusers import ControlNetModel

    channels = (16,) * downsample.bit_length()  # 2^(len - 1) = downsample
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return controlnet


def save_tiny_parts(path: str, denoiser, vae: bool = False, controlnet: bool = False,
                    image_size: int = 8) -> Dict[str, List[str]]:
    """Write ``vae/`` and/or ``controlnet/`` under ``path``; the ``model_index.json`` entries."""
    index: Dict[str, List[str]] = {}
    if vae:
        autoencoder = tiny_autoencoder()
        if type(denoiser).__name__ == "SD3Transformer2DModel":  # SD3's VAE scaling: shift, then scale
            autoencoder.register_to_config(shift_factor=0.0609, scaling_factor=1.5305)
        autoencoder.save_pretrained(safe_join(path, "vae"), safe_serialization=True)
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if controlnet:
        if type(denoiser).__name__ != "UNet2DConditionModel":
            raise ValueError("controlnet: the tiny ControlNet is built from a UNet2DConditionModel")
        model = tiny_controlnet(denoiser, downsample=2 if vae else 1)
        model.save_pretrained(safe_join(path, "controlnet"), safe_serialization=True)
        index["controlnet"] = ["diffusers", "ControlNetModel"]
    return index


def _png(folder: str, name: str, tensor: torch.Tensor) -> str:
    from ..data.images import to_pil

    to_pil(tensor).save(safe_join(folder, name))
    return name


def save_condition_pairs(folder: str, n: int, size: int = 8, seed: int = 0,
                         captions: Sequence[str] = CAPTIONS) -> str:
    """``pairs.jsonl``: ``n`` records of caption, chosen, rejected and a ``condition_image``."""
    generator = torch.Generator().manual_seed(seed)
    os.makedirs(safe_join(folder, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        names = [_png(folder, f"images/{i:04d}_{w}.png", torch.rand((3, size, size), generator=generator) * 2 - 1)
                 for w in ("a", "b", "cond")]
        rows.append({"caption": captions[i % len(captions)], "chosen": names[0], "rejected": names[1],
                     "condition_image": names[2]})
    return _write(folder, "pairs.jsonl", rows)


def save_bide_pairs(folder: str, n: int, size: int = 8, seed: int = 0, captions: Sequence[str] = CAPTIONS) -> str:
    """``bide.jsonl``: ``n`` BideDPO records (a shared caption and condition image, a text pair and a
    condition pair; every third record has its text pair only)."""
    generator = torch.Generator().manual_seed(seed)
    os.makedirs(safe_join(folder, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        def image(tag):
            return _png(folder, f"images/{i:04d}_{tag}.png", torch.rand((3, size, size), generator=generator) * 2 - 1)

        row = {"caption": captions[i % len(captions)], "condition_image": image("cond"),
               "text_pair": {"chosen": image("tw"), "rejected": image("tl")}}
        if i % 3 != 2:
            row["condition_pair"] = {"chosen": image("cw"), "rejected": image("cl")}
        rows.append(row)
    return _write(folder, "bide.jsonl", rows)


def _write(folder: str, name: str, rows) -> str:
    path = safe_join(folder, name)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path
