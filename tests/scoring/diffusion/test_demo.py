"""`dpokit demo --modality diffusion` end to end (quick settings)."""

import json
import os

import pytest
import torch


@pytest.mark.slow
def test_diffusion_demo_quick(tmp_path):
    from diffusers import UNet2DModel

    from dpokit.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--modality", "diffusion", "--quick", "--output-dir", out, "--loss", "ipo",
                 "--hparam", "beta=0.5"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["loss"] == "ipo" and summary["steps"] > 0 and summary["train_pairs"] > 0
    for key in ("fraction_in_preferred_mode", "reward", "class_accuracy", "preference_accuracy"):
        assert 0.0 <= summary["before"][key] <= 1.0 or key == "reward"
        assert key in summary["after"]
    assert summary["before"]["preference_accuracy"] == 0.5  # policy == reference: every pair a tie
    final = UNet2DModel.from_pretrained(os.path.join(out, "train", "final"))
    pretrained = UNet2DModel.from_pretrained(os.path.join(out, "pretrained"))
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), pretrained.state_dict().values()))
    grids = json.load(open(os.path.join(out, "train", "samples", "diffusion", "index.json")))
    assert grids["kind"] == "image" and len(grids["rows"]) == 4
    assert all(os.path.isfile(os.path.join(out, "train", "samples", "diffusion", row[k]))
               for row in grids["rows"] for k in ("policy", "reference"))
