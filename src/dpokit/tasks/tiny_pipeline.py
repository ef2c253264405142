"""A tiny text-to-image pipeline directory built in-process (no downloads), for tests and benchmarks.

``save_tiny_pipeline(path, denoiser="unet" | "sd3" | "wan")`` writes what ``model.kind: diffusion`` loads:
``unet/`` (a 2-block ``UNet2DConditionModel``) or ``transformer/`` (a 2-layer
``SD3Transformer2DModel``, or for video a 2-layer ``WanTransformer3DModel`` of 20k parameters on
[B, 3, F, H, W] clips), ``scheduler/`` (``DDPMScheduler``, epsilon or v-prediction; or
``FlowMatchEulerDiscreteScheduler`` for the transformers), ``text_encoder/`` (a 1-layer
``CLIPTextModel``) and ``tokenizer/`` (word level, trained on the captions), plus
``model_index.json``. ``save_image_pairs`` writes random-image pair records next to it.
"""

from __future__ import annotations

import json
import os
from typing import List, Sequence

import torch

from ..paths import safe_join

HIDDEN = 16


def tiny_text_encoder(captions: Sequence[str]):
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tiny import train_tokenizer

    tokenizer = train_tokenizer(captions, vocab_size=64, word_level=True)
    tokenizer.model_max_length = 8
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=8, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer, CLIPTextModel(config)


def tiny_unet2d_condition(size: int = 8, channels: int = 3):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=size, in_channels=channels, out_channels=channels,
                                block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=HIDDEN,
                                attention_head_dim=8, norm_num_groups=8)


def tiny_sd3_transformer(size: int = 8, channels: int = 3):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=size, patch_size=2, in_channels=channels, out_channels=channels,
                                 num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                 joint_attention_dim=HIDDEN, caption_projection_dim=16,
                                 pooled_projection_dim=HIDDEN, pos_embed_max_size=16)


def tiny_wan_transformer(channels: int = 3):
    """A text-to-video ``WanTransformer3DModel`` (flow matching; patch 1x2x2, 2 layers, 2 heads of 12)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=channels, out_channels=channels, text_dim=HIDDEN, freq_dim=32,
                                 ffn_dim=32, num_layers=2, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def save_tiny_pipeline(path: str, denoiser: str = "unet", prediction_type: str = "epsilon", seed: int = 0,
                       captions: Sequence[str] = ("a red square", "a blue circle", "a green bar"),
                       size: int = 8, vae: bool = False, controlnet: bool = False) -> str:
    """``vae``: add a tiny ``AutoencoderKL`` (``vae/``, 2x downsampling, 4 latent channels; the denoiser
    then works on ``size/2`` latents) and ``controlnet``: a tiny ``ControlNetModel`` from the UNet
    (``controlnet/``): :mod:`dpokit.tasks.tiny_latent`."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from .tiny_latent import LATENT_CHANNELS, save_tiny_parts

    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    tokenizer, encoder = tiny_text_encoder(list(captions))
    tokenizer.save_pretrained(safe_join(path, "tokenizer"))
    encoder.save_pretrained(safe_join(path, "text_encoder"), safe_serialization=True)
    sample, channels = (size // 2, LATENT_CHANNELS) if vae else (size, 3)
    if denoiser == "unet":
        model, folder = tiny_unet2d_condition(sample, channels), "unet"
        scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    elif denoiser in ("sd3", "wan"):
        model = tiny_sd3_transformer(sample, channels) if denoiser == "sd3" else tiny_wan_transformer()
        folder, scheduler = "transformer", FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    else:
        raise ValueError(f"denoiser must be 'unet', 'sd3' or 'wan', got {denoiser!r}")
    model.save_pretrained(safe_join(path, folder), safe_serialization=True)
    scheduler.save_pretrained(safe_join(path, "scheduler"))
    index = {"_class_name": "DiffusionPipeline", folder: ["diffusers", type(model).__name__],
             "scheduler": ["diffusers", type(scheduler).__name__], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}
    index.update(save_tiny_parts(path, model, vae=vae, controlnet=controlnet, image_size=size))
    with open(safe_join(path, "model_index.json"), "w") as handle:
        json.dump(index, handle, indent=2)
    return path


def save_image_pairs(folder: str, n: int, captions: Sequence[str] = ("a red square", "a blue circle", "a green bar"),
                     size: int = 8, seed: int = 0, pick_a_pic: bool = False) -> str:
    """``pairs.jsonl`` of ``n`` records with random PNG images (chosen / rejected, or Pick-a-Pic columns)."""
    from ..data.images import to_pil

    generator = torch.Generator().manual_seed(seed)
    os.makedirs(safe_join(folder, "images"), exist_ok=True)
    rows: List[dict] = []
    for i in range(n):
        names = []
        for which in ("a", "b"):
            name = f"images/{i:04d}_{which}.png"
            to_pil(torch.rand((3, size, size), generator=generator) * 2 - 1).save(safe_join(folder, name))
            names.append(name)
        caption = captions[i % len(captions)]
        if pick_a_pic:
            rows.append({"caption": caption, "jpg_0": names[0], "jpg_1": names[1], "label_0": [1, 0, 0.5][i % 3]})
        else:
            rows.append({"caption": caption, "chosen": names[0], "rejected": names[1]})
    path = safe_join(folder, "pairs.jsonl")
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path
