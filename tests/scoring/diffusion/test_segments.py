"""Per-segment denoising errors (DenseDPO) against a naive loop, and dense_segment_dpo through the scorer."""

import numpy as np
import pytest
import torch

from dpokit.data.video import VideoBatch
from dpokit.losses import get_loss, get_spec
from dpokit.scoring.diffusion import DiffusionScorer
from dpokit.scoring.diffusion.noise import draw_noise
from dpokit.scoring.diffusion.segments import segment_errors


def flow_scheduler(shift=3.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


class TinyVideoDenoiser(torch.nn.Module):
    """v_theta(x_t, t, c) = conv3d(x_t) * (1 + t/1000) + e(c): mixes neighbouring frames and the condition."""

    def __init__(self, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv3d(3, 3, 3, padding=1).to(dtype)
        self.cond = torch.nn.Linear(4, 3).to(dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))

    def forward(self, x, timestep, encoder_hidden_states=None):
        scale = (1 + timestep.to(x.dtype) / 1000).view(-1, 1, 1, 1, 1)
        return self.conv(x) * scale + self.cond(encoder_hidden_states.mean(1))[:, :, None, None, None]


def video_batch(b, frames, seed, segments, labels):
    """``segments``: per example a list of (start, end); ``labels``: per example one label per segment."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((b, 2, 3, frames, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    width = max(len(s) for s in segments)
    frame_segments = torch.full((b, frames), -1, dtype=torch.long)
    y = torch.zeros(b, width, dtype=torch.float64)
    for i, (segs, labs) in enumerate(zip(segments, labels)):
        for j, ((start, end), label) in enumerate(zip(segs, labs)):
            frame_segments[i, start:end] = j
            y[i, j] = label
    cond = {"encoder_hidden_states": torch.randn(b, 2, 4, generator=g, dtype=torch.float64)}
    return VideoBatch(images, cond, torch.arange(b), torch.zeros(b, dtype=torch.long), [""] * b,
                      extras={"segment_labels": y}, frame_segments=frame_segments)


def naive_segment_errors(model, scheduler, batch, seed):
    """Per example, sample and segment: x_t, target, prediction, then the mean over the segment's elements."""
    b, m, _, frames = batch.images.shape[:4]
    width = batch.extras["segment_labels"].shape[1]
    out = np.zeros((b, m, width))
    for i in range(b):
        eps, t = draw_noise(batch.images.shape[2:], [int(batch.indices[i])], [0], seed, (0, 1000))
        u = (t.double() + 1) / 1000
        sigma = float(3 * u / (1 + 2 * u))
        for j in range(m):
            x0 = batch.images[i, j]
            x_t = (1 - sigma) * x0 + sigma * eps[0].double()
            with torch.no_grad():
                pred = model(x_t[None], torch.tensor([sigma * 1000]),
                             batch.conditions["encoder_hidden_states"][i:i + 1])[0].numpy()
            squared = (pred - (eps[0].double() - x0).numpy()) ** 2  # [C, F, H, W]
            for s in range(width):
                frames_in = [f for f in range(frames) if int(batch.frame_segments[i, f]) == s]
                if frames_in:
                    out[i, j, s] = squared[:, frames_in].mean()
    return out


SEGMENT_NEEDS = get_spec("dense_segment_dpo").needs


@pytest.mark.parametrize("segments, labels", [
    ([[(0, 2), (2, 5)], [(0, 1), (3, 5)]], [[1, -1], [-1, 1]]),          # a frame outside every segment
    ([[(0, 5)], [(0, 3), (3, 4), (4, 5)]], [[1], [1, 0, -1]]),          # padding segments in the first example
    ([[(4, 5), (0, 4)]], [[-1, 1]]),                                     # segments not in frame order
])
def test_segment_errors_match_a_naive_loop(segments, labels):
    scheduler = flow_scheduler()
    policy, reference = TinyVideoDenoiser(0), TinyVideoDenoiser(1)
    batch = video_batch(len(segments), 5, 3, segments, labels)
    scorer = DiffusionScorer(SEGMENT_NEEDS, scheduler, seed=7)
    inputs = scorer.loss_inputs(policy, batch, reference)
    np.testing.assert_allclose(-inputs.extras["segment_policy_logps"].detach().numpy(),
                               naive_segment_errors(policy, scheduler, batch, 7), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(-inputs.extras["segment_reference_logps"].numpy(),
                               naive_segment_errors(reference, scheduler, batch, 7), rtol=1e-10, atol=1e-12)
    assert inputs.extras["segment_labels"].tolist() == batch.extras["segment_labels"].tolist()


def test_segment_errors_are_frame_weighted_means_of_the_clip_error():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 6, 3, 3, generator=g), torch.randn(3, 2, 6, 3, 3, generator=g)
    frame_segments = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0] * 6])
    errors = segment_errors(pred, target, frame_segments, 2)
    whole = (pred - target).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(errors[0].mean(), whole[0])
    torch.testing.assert_close((errors[1] * torch.tensor([1.0, 5.0])).sum() / 6, whole[1])
    torch.testing.assert_close(errors[2], torch.stack([whole[2], torch.tensor(0.0)]))  # an empty segment: 0


@pytest.mark.parametrize("beta, seed", [(0.5, 0), (5.0, 1), (50.0, 2)])
def test_one_segment_over_all_frames_is_dpo(beta, seed):
    scheduler = flow_scheduler()
    policy, reference = TinyVideoDenoiser(seed), TinyVideoDenoiser(seed + 10)
    batch = video_batch(3, 4, seed, [[(0, 4)]] * 3, [[1], [-1], [1]])
    inputs = DiffusionScorer(SEGMENT_NEEDS, scheduler, seed=seed).loss_inputs(policy, batch, reference)
    dense = get_loss("dense_segment_dpo", beta=beta)(inputs).loss
    dpo = get_loss("dpo", beta=beta)(inputs).loss  # the clip-level fields, chosen = video_a
    np.testing.assert_allclose(dense[[0, 2]].detach().numpy(), dpo[[0, 2]].detach().numpy(), rtol=1e-10)
    # label -1: dpo with a and b swapped
    h = (inputs.policy_chosen_logps - inputs.reference_chosen_logps) - (
        inputs.policy_rejected_logps - inputs.reference_rejected_logps)
    np.testing.assert_allclose(float(dense[1].detach()), float(-torch.nn.functional.logsigmoid(-beta * h[1].detach())), rtol=1e-10)


def test_dense_segment_dpo_gradcheck_through_the_scorer():
    scheduler = flow_scheduler()
    reference = TinyVideoDenoiser(5)
    batch = video_batch(2, 4, 4, [[(0, 2), (2, 4)], [(0, 1), (1, 4)]], [[1, -1], [0, 1]])
    scorer = DiffusionScorer(SEGMENT_NEEDS, scheduler, seed=1)
    loss_fn = get_loss("dense_segment_dpo", beta=3.0)
    base = TinyVideoDenoiser(6)

    def loss_of(weight):
        class Policy(torch.nn.Module):
            def forward(self, x, timestep, encoder_hidden_states=None):
                scale = (1 + timestep.to(x.dtype) / 1000).view(-1, 1, 1, 1, 1)
                out = torch.nn.functional.conv3d(x, weight, base.conv.bias, padding=1) * scale
                return out + base.cond(encoder_hidden_states.mean(1))[:, :, None, None, None]

        return loss_fn(scorer.loss_inputs(Policy(), batch, reference)).loss

    weight = base.conv.weight.detach().clone()[:, :, :, :, :].requires_grad_()
    assert torch.autograd.gradcheck(loss_of, (weight,), eps=1e-6, atol=1e-5)


def test_segment_loss_without_segment_data_is_a_clear_error():
    from dpokit.data.images import ImageBatch

    batch = video_batch(1, 4, 0, [[(0, 4)]], [[1]])
    plain = ImageBatch(batch.images, batch.conditions, batch.indices, batch.draws, batch.captions)
    scorer = DiffusionScorer(SEGMENT_NEEDS, flow_scheduler(), seed=0)
    with pytest.raises(ValueError, match="per-segment labels"):
        scorer.loss_inputs(TinyVideoDenoiser(0), plain, TinyVideoDenoiser(1))
