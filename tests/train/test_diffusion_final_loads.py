"""A diffusion run's ``final/`` loads where users load it: the denoiser's and the pipeline's
``from_pretrained``, and the LoRA adapter through the pipeline's ``load_lora_weights``."""

import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.tasks.tiny_pipeline import save_image_pairs, tiny_text_encoder, tiny_unet2d_condition

from .test_diffusion_train import diffusion_config


def save_tiny_stable_diffusion(path):
    """A complete StableDiffusionPipeline layout (tiny VAE, no safety checker) saved by diffusers itself."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline

    torch.manual_seed(0)
    tokenizer, encoder = tiny_text_encoder(["a red square", "a blue circle", "a green bar"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=3,
                        norm_num_groups=4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=tiny_unet2d_condition(8),
                                   scheduler=DDPMScheduler(num_train_timesteps=1000), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


@pytest.mark.slow
def test_lora_run_final_loads_with_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from dpokit.train import Trainer

    model_dir = save_tiny_stable_diffusion(str(tmp_path / "pipe"))
    data = save_image_pairs(str(tmp_path / "data"), 6)
    raw = diffusion_config(model_dir, data, tmp_path / "run", lora={"enabled": True, "r": 4, "alpha": 8,
                                                                    "dropout": 0.0})
    Trainer(from_dict(raw)).fit()
    final = str(tmp_path / "run" / "final")
    assert os.path.isfile(os.path.join(final, "adapter", "pytorch_lora_weights.safetensors"))
    merged = UNet2DConditionModel.from_pretrained(final, subfolder="unet", use_safetensors=True).eval()
    pipe = StableDiffusionPipeline.from_pretrained(final, safety_checker=None)  # the whole pipeline
    base = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 600])
    ids = pipe.tokenizer(["a red square", "a green bar"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        c = pipe.text_encoder(ids)[0]
        trained = merged(x, t, c).sample
        before = base.unet(x, t, c).sample
        torch.testing.assert_close(pipe.unet(x, t, c).sample, trained)
        assert (trained - before).abs().max() > 1e-4  # training moved the denoiser
        base.load_lora_weights(os.path.join(final, "adapter"))  # base + adapter (r 4, alpha 8) == merged
        torch.testing.assert_close(base.unet(x, t, c).sample, trained, atol=1e-5, rtol=1e-4)
