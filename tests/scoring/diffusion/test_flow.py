"""The flow-matching surrogate: x_t = (1 - sigma) x0 + sigma eps, velocity target eps - x0."""

import numpy as np
import pytest
import torch

from dpokit.losses import get_loss
from dpokit.scoring.diffusion import DiffusionScorer, flow_sigma, model_timesteps, noised_and_target
from dpokit.scoring.diffusion.noise import draw_noise, prediction_type


def flow_scheduler(shift=1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sigma_is_the_schedulers_training_grid(shift):
    scheduler = flow_scheduler(shift)
    t = torch.tensor([0, 1, 250, 999])
    grid = scheduler.sigmas[:1000].flip(0)  # the scheduler's own sigmas, least noise first
    np.testing.assert_allclose(flow_sigma(scheduler, t).numpy(), grid[t].numpy(), rtol=1e-5)
    np.testing.assert_allclose(model_timesteps(scheduler, t).numpy(), scheduler.timesteps.flip(0)[t].numpy(),
                               rtol=1e-5)
    assert prediction_type(scheduler) == "flow"


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_noised_and_target_against_numpy(shift):
    scheduler = flow_scheduler(shift)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([3, 100, 500, 998])
    x_t, target = noised_and_target(scheduler, x0, eps, t)
    u = (t.numpy().astype(np.float64) + 1) / 1000
    sigma = (shift * u / (1 + (shift - 1) * u))[:, None, None, None]
    np.testing.assert_allclose(x_t.numpy(), (1 - sigma) * x0.numpy() + sigma * eps.numpy(), atol=1e-6)
    np.testing.assert_allclose(target.numpy(), eps.numpy() - x0.numpy(), atol=1e-6)


class TimestepLast(torch.nn.Module):
    """An SD3-like signature: timestep after the conditions; output depends on all of them."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None):
        return self.w * hidden_states * (timestep.view(-1, 1, 1, 1) / 1000.0) + pooled_projections.view(-1, 1, 1, 1)


def test_scorer_and_dpo_on_flow_matching_against_numpy():
    from dpokit.data.images import ImageBatch
    from dpokit.losses import Needs

    scheduler = flow_scheduler(3.0)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 2, 1, 2, 2, generator=g, dtype=torch.float64)
    pooled = torch.randn(3, generator=g, dtype=torch.float64)
    batch = ImageBatch(images, {"pooled_projections": pooled, "encoder_hidden_states": torch.zeros(3, 1)},
                       torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), ["a", "b", "c"])
    policy, reference = TimestepLast(), TimestepLast()
    reference.w.data.fill_(0.1)
    scorer = DiffusionScorer(Needs(reference=True, data="pairs"), scheduler, seed=5)
    inputs = scorer.loss_inputs(policy, batch, reference)
    loss = get_loss("dpo", beta=2.0)(inputs).loss
    eps, t = draw_noise((1, 2, 2), [0, 1, 2], [0, 0, 0], 5, (0, 1000))
    eps, t = eps.double().numpy(), t.numpy()
    u = (t + 1) / 1000
    sigma = 3 * u / (1 + 2 * u)
    expected = []
    for i in range(3):
        errs = {}
        for name, w in (("pi", 0.3), ("ref", 0.1)):
            e = []
            for j in range(2):
                x0 = images[i, j].numpy()
                x_t = (1 - sigma[i]) * x0 + sigma[i] * eps[i]
                pred = w * x_t * sigma[i] + pooled[i].item()  # timestep/1000 = sigma
                e.append(np.mean((pred - (eps[i] - x0)) ** 2))
            errs[name] = e
        h = -((errs["pi"][0] - errs["pi"][1]) - (errs["ref"][0] - errs["ref"][1]))
        expected.append(np.logaddexp(0, -2.0 * h))
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda w: get_loss("dpo", beta=2.0)(scorer.loss_inputs(
        _with_w(policy, w), batch, reference)).loss, (policy.w.detach().clone().requires_grad_(),))


def _with_w(module, w):
    class Wrapped(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None):
            return w * hidden_states * (timestep.view(-1, 1, 1, 1) / 1000.0) + pooled_projections.view(-1, 1, 1, 1)

    return Wrapped()
