"""`dpokit train` on a video denoiser: a tiny WanTransformer3DModel pipeline (flow matching), clip pairs
and clips with per-segment labels (DenseDPO), and the frame grids the report shows."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.errors import ConfigError, DataError
from dpokit.tasks.tiny_pipeline import save_tiny_pipeline
from dpokit.tasks.tiny_video import save_video_pairs

from .test_diffusion_train import diffusion_config


def video_config(model_dir, data, out, **sections):
    """The diffusion test config with 4 sampler steps for the frame grids."""
    sections["diffusion"] = {"sample_steps": 4, **sections.get("diffusion", {})}
    return diffusion_config(model_dir, data, out, **sections)


def test_train_wan_on_clip_pairs_with_frame_grids(tmp_path):
    from diffusers import WanTransformer3DModel

    from dpokit.eval.report import build_report
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "wan")
    data = save_video_pairs(str(tmp_path / "data"), 8, frames=5, layout="npy")
    trainer = Trainer(from_dict(video_config(model_dir, data, tmp_path / "run")))
    assert trainer.scorer.prediction_type == "flow" and trainer.tokenizer.video
    assert trainer.train_examples[0].images.shape == (2, 3, 5, 8, 8)
    assert trainer.fit()["status"] == "completed"
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("eval/loss" in r for r in rows)
    final = tmp_path / "run" / "final" / "transformer"
    trained = WanTransformer3DModel.from_pretrained(str(final), use_safetensors=True)
    initial = WanTransformer3DModel.from_pretrained(os.path.join(model_dir, "transformer"), use_safetensors=True)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))
    grids = tmp_path / "run" / "samples" / "diffusion"
    index = json.load(open(grids / "index.json"))
    assert index["kind"] == "video" and index["frames"] == [0, 2, 4] and index["steps"] == 4
    assert 1 <= len(index["rows"]) <= 3  # the distinct captions, eval examples first
    from PIL import Image

    strip = Image.open(grids / index["rows"][0]["policy"])
    assert strip.size == (3 * 8 + 2, 8)  # three frames side by side, 1 pixel apart
    assert Image.open(grids / index["rows"][0]["reference"]).size == strip.size
    page = open(build_report([str(tmp_path / "run")], str(tmp_path / "report"))).read()
    assert "Frame grids: policy vs reference samples" in page and page.count("data:image/png;base64") >= 2


def test_dense_segment_dpo_from_a_file_with_lora(tmp_path):
    from dpokit.reference import AdapterDisabledReference
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "wan")
    data = save_video_pairs(str(tmp_path / "data"), 8, frames=4, segments=True)
    raw = video_config(model_dir, data, tmp_path / "run", loss={"name": "dense_segment_dpo", "beta": 250.0},
                       lora={"enabled": True, "r": 4, "alpha": 4, "dropout": 0.0}, diffusion={"num_frames": 4,
                                                                                            "sample_grids": 0})
    trainer = Trainer(from_dict(raw))
    assert isinstance(trainer.reference, AdapterDisabledReference)
    batch = trainer._batch([0, 1], trainer.train_examples)
    inputs = trainer.scorer.loss_inputs(trainer.model, batch, trainer.reference)
    assert inputs.extras["segment_policy_logps"].shape == (2, 2, 2)
    assert inputs.extras["segment_labels"].abs().sum() > 0
    assert trainer.fit()["status"] == "completed"
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in rows if "loss" in r]
    assert steps and all(r["segments/labelled"] == 2.0 for r in steps)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert os.path.isdir(tmp_path / "run" / "final" / "adapter")
    assert not os.path.exists(tmp_path / "run" / "samples" / "diffusion")  # sample_grids: 0


def test_video_config_and_data_errors(tmp_path):
    from dpokit.preflight import check_run
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "wan")
    data = save_video_pairs(str(tmp_path / "data"), 4, frames=3)
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'chosen': the clip has 3 frames, expected 4"):
        Trainer(from_dict(video_config(model_dir, data, tmp_path / "run", diffusion={"num_frames": 4})))
    with pytest.raises(ConfigError, match="diffusion.num_frames"):
        check_run(from_dict(video_config(model_dir, data, tmp_path / "run", diffusion={"num_frames": 0})))
    # a segment loss on clip pairs without segment labels: one segment over all frames, chosen wins
    raw = video_config(model_dir, data, tmp_path / "run2", loss={"name": "dense_segment_dpo", "beta": 10.0},
                       diffusion={"sample_grids": 0})
    trainer = Trainer(from_dict(raw))
    batch = trainer._batch([0, 1], trainer.train_examples)
    assert batch.frame_segments is None
    with pytest.raises(ValueError, match="per-segment labels"):
        trainer.scorer.loss_inputs(trainer.model, batch, trainer.reference)
