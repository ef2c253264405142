"""Resume of a diffusion run: `dpokit train` on a tiny text-to-image pipeline, killed (-9) after a
checkpoint in its second epoch and resumed, ends with the same denoiser weights and the same
per-step losses as an uninterrupted run. The noise of an example is drawn per (seed, example,
epoch), so the resumed epoch draws what the uninterrupted one drew."""

import json
import os
import signal

import pytest
import torch
import yaml

from dpokit.config import from_dict
from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline
from dpokit.train import Trainer
from dpokit.train import checkpoint as ckpt
from dpokit.train.logging import read_metrics

from .test_crash_resume import PAUSE_AT_STEP, start, wait_for

pytestmark = pytest.mark.slow  # a training run in a subprocess, killed and resumed


def config(model_dir, data, out):
    # 12 pairs, batch 2 -> 6 steps per epoch; 2 epochs = 12 steps, a checkpoint every 4 (the one at 8 is in epoch 1)
    return {"model": {"name_or_path": model_dir, "kind": "diffusion", "dtype": "float32"},
            "data": {"train": data}, "loss": {"name": "dpo", "beta": 250.0},
            "train": {"output_dir": str(out), "lr": 1e-3, "batch_size": 2, "epochs": 2, "save_every": 4,
                      "keep_last": 2, "report_to": [], "progress_bar": False, "mixed_precision": "no",
                      "warmup_ratio": 0.0, "scheduler": "constant", "seed": 3}}


def final_unet(run):
    from safetensors.torch import load_file

    return load_file(os.path.join(run, "final", "unet", "diffusion_pytorch_model.safetensors"))


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "loss" in r}


def test_diffusion_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_pairs(str(tmp_path / "data"), 12)
    reference_run = tmp_path / "uninterrupted"
    assert Trainer(from_dict(config(model_dir, data, reference_run))).fit()["status"] == "completed"

    run = tmp_path / "run"
    raw = config(model_dir, data, run)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    script, marker = tmp_path / "pause_at_step.py", tmp_path / "paused"
    script.write_text(PAUSE_AT_STEP)
    proc = start([str(script), str(path), str(marker), "10"])  # holds at step 10, after the checkpoint at 8
    wait_for(marker, proc)
    assert "step-000008" in os.listdir(run / "checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest_valid_checkpoint(str(run / "checkpoints")).endswith("step-000008")
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == 12

    want, got = final_unet(reference_run), final_unet(run)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    expected, resumed = losses(reference_run), losses(run)
    assert sorted(expected) == list(range(1, 13)) and set(resumed) == set(expected)
    for step in expected:  # steps 9-10 were logged twice (before the kill and after the resume): the last wins
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-7), step
    with open(run / "final" / "unet" / "config.json") as handle:
        assert json.load(handle)["_class_name"] == "UNet2DConditionModel"
