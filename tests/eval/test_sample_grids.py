"""Image and frame grids of diffusion samples (policy vs reference) and the sampler that draws them."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dpokit.diffusion_sampling import sample
from dpokit.eval.runs import load_run
from dpokit.eval.sample_grids import grids_section, key_frames, read_sample_grids, save_sample_grids


def test_key_frames():
    assert key_frames(1) == [0] and key_frames(2) == [0, 1] and key_frames(5) == [0, 2, 4]
    assert key_frames(8) == [0, 3, 7]


def test_image_and_frame_grids_are_written_and_shown(tmp_path):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 6, 4, 5, generator=g) * 2 - 1
    index = json.load(open(save_sample_grids(str(tmp_path / "v" / "samples" / "diffusion"), ["a", "b"], video,
                                             -video, {"seed": 3, "steps": 7})))
    assert index["kind"] == "video" and index["frames"] == [0, 2, 5] and index["seed"] == 3
    strip = np.asarray(Image.open(tmp_path / "v" / "samples" / "diffusion" / index["rows"][1]["policy"]))
    assert strip.shape == (4, 3 * 5 + 2, 3)
    expected = ((video[1, :, 5].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(strip[:, 12:], expected)  # the last frame, after two frames and two gaps
    assert (strip[:, 5] == 255).all()  # the white gap
    images = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    save_sample_grids(str(tmp_path / "i" / "samples" / "diffusion"), ["only policy"], images)
    assert read_sample_grids(str(tmp_path / "i"))["kind"] == "image"
    os.makedirs(tmp_path / "i" / "x")
    runs = [load_run(str(tmp_path / "v")), load_run(str(tmp_path / "i"))]
    section = "".join(grids_section(runs))
    assert section.startswith("<h2>Image and frame grids") and section.count("data:image/png;base64") == 5
    assert "reference" not in section.split("<h3>i</h3>")[1].split("<table>")[1].split("</tr>")[0]
    assert grids_section([load_run(str(tmp_path / "i" / "x"))]) == []
    with pytest.raises(ValueError, match="RGB samples"):
        save_sample_grids(str(tmp_path / "bad"), ["a"], torch.zeros(1, 4, 8, 8))


class Velocity(torch.nn.Module):
    def forward(self, x, timestep, encoder_hidden_states=None):
        return 0.5 * x - encoder_hidden_states.view(-1, 1, 1, 1, 1) * (timestep.view(-1, 1, 1, 1, 1) / 1000)


def test_flow_sampler_is_euler_on_the_schedulers_grid():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    cond = torch.tensor([0.2, -0.4], dtype=torch.float64)
    out = sample(Velocity(), scheduler, {"encoder_hidden_states": cond}, noise, steps=5)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    reference.set_timesteps(5)
    sigmas = reference.sigmas.double().numpy()  # 5 steps + the final 0
    x = noise.numpy()
    for k in range(5):
        v = 0.5 * x - cond.numpy().reshape(-1, 1, 1, 1, 1) * sigmas[k]
        x = x + (sigmas[k + 1] - sigmas[k]) * v
    np.testing.assert_allclose(out.numpy(), np.clip(x, -1, 1), rtol=1e-5, atol=1e-6)
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0
