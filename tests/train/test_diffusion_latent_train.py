"""`dpokit train` on latent pipelines: a tiny AutoencoderKL (latents cached once per image, reused on a
second run in the same directory), a frozen ControlNet with condition images, and BideDPO records."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.tasks.tiny_latent import save_bide_pairs, save_condition_pairs
from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline

from .test_diffusion_train import diffusion_config


def config(model_dir, data, out, **sections):
    """The diffusion test config over 2 epochs (the latent cache is reused in the second)."""
    sections["train"] = {"epochs": 2, **sections.get("train", {})}
    return from_dict(diffusion_config(model_dir, data, out, **sections))


@pytest.fixture
def count_encodes(monkeypatch):
    from diffusers import AutoencoderKL

    seen = {"images": 0}
    original = AutoencoderKL.encode

    def encode(self, x, *args, **kwargs):
        seen["images"] += x.shape[0]
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", encode)
    return seen


def test_latent_pipeline_encodes_each_image_once_over_epochs_and_runs(tmp_path, count_encodes):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", size=16, vae=True)
    data = save_image_pairs(str(tmp_path / "data"), 6, size=16)
    rows = [json.loads(line) for line in open(data)]
    rows[1]["chosen"] = rows[0]["chosen"]  # one image used twice: 11 unique of 12
    with open(data, "w") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    trainer = Trainer(config(model_dir, data, run, train={"save_every": 1}))
    assert trainer.train_examples[0].images.shape == (2, 4, 8, 8)  # latents, not pixels
    assert count_encodes["images"] == 11
    assert trainer.fit()["epoch"] == 2
    assert count_encodes["images"] == 11  # two epochs, no more encoding
    latents = {ex.index: ex.images.clone() for ex in trainer.train_examples + trainer.eval_examples}
    # resume from the last checkpoint for a third epoch: the data comes from the cache
    again = Trainer(config(model_dir, data, run, train={"epochs": 3, "save_every": 1}))
    assert count_encodes["images"] == 11 and "11 from the cache" in again.data_report["load"]
    for ex in again.train_examples + again.eval_examples:
        assert torch.equal(ex.images, latents[ex.index])
    assert again.fit(resume=True)["epoch"] == 3 and count_encodes["images"] == 11
    assert os.listdir(run / "latent_cache")
    final = run / "final"
    UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True)
    AutoencoderKL.from_pretrained(str(final / "vae"), use_safetensors=True)
    # diffusion.vae: none would feed RGB pixels to this 4-channel (latent) denoiser: refused when built
    from dpokit.errors import ConfigError

    with pytest.raises(ConfigError, match="diffusion.vae: none trains on RGB pixels, but the denoiser takes 4"):
        Trainer(config(model_dir, data, tmp_path / "pixels", diffusion={"vae": "none"}))


def test_dpokit_train_cli_on_a_latent_controlnet_pipeline(tmp_path):
    import yaml

    from dpokit.cli import main

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", size=16, vae=True, controlnet=True)
    data = save_condition_pairs(str(tmp_path / "data"), 4, size=16)
    raw = config(model_dir, data, tmp_path / "run", train={"epochs": 1}).to_yaml_dict()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    final = tmp_path / "run" / "final"
    assert {"unet", "vae", "controlnet", "scheduler"} <= set(os.listdir(final))
    assert os.listdir(tmp_path / "run" / "latent_cache")


def test_controlnet_pipeline_with_bide_dpo(tmp_path):
    from diffusers import ControlNetModel

    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", size=16, vae=True, controlnet=True)
    data = save_bide_pairs(str(tmp_path / "data"), 6, size=16)
    trainer = Trainer(config(model_dir, data, tmp_path / "run", loss={"name": "bide_dpo", "beta": 250.0},
                             train={"epochs": 1}))
    assert trainer.scorer.control is not None
    assert len(trainer.train_examples) + len(trainer.eval_examples) == 10  # 6 text pairs + 4 condition pairs
    frozen = {k: v.clone() for k, v in trainer.tokenizer.control.controlnet.state_dict().items()}
    assert trainer.fit()["status"] == "completed"
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("bide/text_loss" in r for r in rows)
    for k, v in trainer.tokenizer.control.controlnet.state_dict().items():
        assert torch.equal(v.cpu(), frozen[k].cpu()), k
    ControlNetModel.from_pretrained(str(tmp_path / "run" / "final" / "controlnet"), use_safetensors=True)


def test_controlnet_pipeline_refuses_records_without_condition(tmp_path):
    from dpokit.errors import DataError
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", size=8, controlnet=True)
    with pytest.raises(DataError, match="field 'condition_image': missing condition image"):
        Trainer(config(model_dir, save_image_pairs(str(tmp_path / "data"), 4), tmp_path / "run"))
    data = save_condition_pairs(str(tmp_path / "cond"), 4, size=8)
    assert Trainer(config(model_dir, data, tmp_path / "run2", train={"epochs": 1})).fit()["status"] == "completed"


def test_sd3_latent_pipeline_with_shift_factor(tmp_path):
    from dpokit.scoring.diffusion.latents import load_vae
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "sd3", size=16, vae=True)
    assert load_vae(model_dir).config.shift_factor == pytest.approx(0.0609)
    trainer = Trainer(config(model_dir, save_image_pairs(str(tmp_path / "data"), 4, size=16), tmp_path / "run",
                             train={"epochs": 1}, diffusion={"latent_sample": "mean"}))
    assert trainer.scorer.prediction_type == "flow" and trainer.train_examples[0].images.shape == (2, 4, 8, 8)
    assert trainer.fit()["status"] == "completed"
