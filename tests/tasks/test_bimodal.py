"""The bimodal task's sampler and the two-direction check of preference training on it."""

import json
import os

import numpy as np
import pytest
import torch

from dpokit.tasks.bimodal import BimodalTask, ddim_sample, noise_scheduler


class LinearDenoiser(torch.nn.Module):
    """eps_hat(x_t) = k * x_t: its implied x0 leaves [-1, 1] at large t, so clipping matters."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x, t, **conditions):
        return self.k * x


def numpy_ddim(x, k, steps, rederive):
    """DDIM (eta 0) over the linear-beta DDPM schedule, written out: x0 clipped to [-1, 1]; the noise
    of the step re-derived from the clipped x0 (``rederive``) or kept as predicted."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    x = x.astype(np.float64)
    for t in range(1000 - 1000 // steps, -1, -(1000 // steps)):
        prev = t - 1000 // steps
        a_t, a_prev = abar[t], (abar[prev] if prev >= 0 else 1.0)
        eps = k * x
        x0 = np.clip((x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), -1, 1)
        if rederive:
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return np.clip(x, -1, 1)


@pytest.mark.parametrize("k", [0.3, 0.8, -0.5])
def test_ddim_sample_pairs_the_clipped_x0_with_its_own_noise(k):
    noise = torch.randn((8, 3, 8, 8), generator=torch.Generator().manual_seed(7)).numpy()
    got = ddim_sample(LinearDenoiser(k), noise_scheduler(), {}, 8, 8, seed=7, steps=10).numpy()
    consistent = numpy_ddim(noise, k, 10, rederive=True)
    inconsistent = numpy_ddim(noise, k, 10, rederive=False)
    assert np.abs(consistent - inconsistent).max() > 0.1  # the check can tell the two apart
    np.testing.assert_allclose(got, consistent, atol=2e-4)


def test_mode_score_labels_the_modes():
    task = BimodalTask()
    classes = torch.arange(4).repeat(8)
    a = task.sample(classes, torch.Generator().manual_seed(0), mode_a_fraction=1.0)
    b = task.sample(classes, torch.Generator().manual_seed(0), mode_a_fraction=0.0)
    assert (task.mode_score(a) > 0).all() and (task.mode_score(b) < 0).all()
    assert a[:, 0, :, :4].mean() > 0 and b[:, 2, :, 4:].mean() > 0  # A: red left, B: blue right


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_preference_moves_the_sampled_mode_both_ways(tmp_path, seed):
    """Prefer A raises the fraction of samples in mode A, prefer B lowers it (same seed, same
    pretraining). Before the sampler used the clipped x0's own noise, both moved the wrong way."""
    from dpokit.tasks.diffusion_demo import DiffusionDemoSettings, run_diffusion_demo

    after = {}
    for prefer in ("A", "B"):
        settings = DiffusionDemoSettings(output_dir=str(tmp_path / prefer), prefer=prefer, seed=seed,
                                         samples_per_class=96, eval_per_class=64)
        summary = run_diffusion_demo(settings, log=lambda *a: None)
        before = summary["before"]["fraction_in_A"]
        after[prefer] = summary["after"]["fraction_in_A"]
        assert json.load(open(os.path.join(settings.output_dir, "summary.json")))["prefer"] == prefer
    assert after["A"] > before + 0.05, (before, after)
    assert after["B"] < before - 0.05, (before, after)
