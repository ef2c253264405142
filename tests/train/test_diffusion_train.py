"""`dpokit train` on a diffusion config: a tiny text-to-image pipeline saved locally, image pairs."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.errors import ConfigError
from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline


def diffusion_config(model_dir, data, out, **sections):
    raw = {
        "model": {"name_or_path": str(model_dir), "kind": "diffusion", "dtype": "float32"},
        "data": {"train": str(data), "eval_fraction": 0.25},
        "loss": {"name": "dpo", "beta": 250.0},
        "train": {"output_dir": str(out), "lr": 1e-3, "batch_size": 2, "epochs": 1, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_train_unet_full_finetune(tmp_path, prediction_type):
    from diffusers import UNet2DConditionModel

    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", prediction_type)
    data = save_image_pairs(str(tmp_path / "data"), 9, pick_a_pic=True)  # every third a tie, dropped
    trainer = Trainer(from_dict(diffusion_config(model_dir, data, tmp_path / "run")))
    assert trainer.scorer.prediction_type == prediction_type
    assert len(trainer.train_examples) + len(trainer.eval_examples) == 6
    result = trainer.fit()
    assert result["status"] == "completed" and result["step"] == -(-len(trainer.train_examples) // 2)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("eval/loss" in r for r in rows) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    final = tmp_path / "run" / "final"
    assert {"unet", "scheduler", "text_encoder", "tokenizer", "model_index.json"} <= set(os.listdir(final))
    trained = UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True)
    initial = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), use_safetensors=True)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))


def test_train_unet_lora_with_adapter_disabled_reference(tmp_path):
    from diffusers import UNet2DConditionModel

    from dpokit.reference import AdapterDisabledReference
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_pairs(str(tmp_path / "data"), 6)
    raw = diffusion_config(model_dir, data, tmp_path / "run", lora={"enabled": True, "r": 4, "alpha": 4,
                                                                    "dropout": 0.0})
    trainer = Trainer(from_dict(raw))
    assert isinstance(trainer.reference, AdapterDisabledReference)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # the reference is the base denoiser: adapters off gives the initial UNet's output
    initial = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), use_safetensors=True).eval()
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    cond = trainer.tokenizer.conditioner(["a red square", "a green bar"])
    with torch.no_grad(), trainer.reference.active() as ref:
        off = ref(x, t, **cond).sample
    with torch.no_grad():
        on = trainer.model(x, t, **cond).sample
    torch.testing.assert_close(off, initial(x, t, **cond).sample, atol=1e-5, rtol=1e-5)
    assert (on - off).abs().max() > 1e-3
    trainer.fit()
    final = tmp_path / "run" / "final"
    assert os.path.isdir(final / "adapter") and os.path.isdir(final / "unet")
    UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True)


def test_diffusion_config_errors(tmp_path):
    from dpokit.preflight import check_run

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_pairs(str(tmp_path / "data"), 3)
    with pytest.raises(ConfigError, match="model.name_or_path: no such directory"):
        check_run(from_dict(diffusion_config(tmp_path / "nope", data, tmp_path / "run")))
    with pytest.raises(ConfigError, match="reference"):
        check_run(from_dict(diffusion_config(model_dir, data, tmp_path / "run", reference={"kind": "path",
                                                                                           "path": model_dir})))
    with pytest.raises(ConfigError, match="model.kind"):
        from_dict(diffusion_config(model_dir, data, tmp_path / "run", model={"kind": "gan"}))
    os.remove(os.path.join(model_dir, "scheduler", "scheduler_config.json"))
    with pytest.raises(ConfigError, match="scheduler"):
        check_run(from_dict(diffusion_config(model_dir, data, tmp_path / "run")))


def test_train_sd3_transformer_flow_matching(tmp_path):
    from diffusers import SD3Transformer2DModel

    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "sd3")
    data = save_image_pairs(str(tmp_path / "data"), 6)
    trainer = Trainer(from_dict(diffusion_config(model_dir, data, tmp_path / "run")))
    assert trainer.scorer.prediction_type == "flow"
    assert trainer.fit()["status"] == "completed"
    trained = SD3Transformer2DModel.from_pretrained(str(tmp_path / "run" / "final" / "transformer"),
                                                    use_safetensors=True)
    initial = SD3Transformer2DModel.from_pretrained(os.path.join(model_dir, "transformer"), use_safetensors=True)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))
