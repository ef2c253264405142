"""The diffusion scorer against a naive per-sample computation, and Diffusion-DPO as `dpo`.

The official Diffusion-DPO loss (SalesforceAIResearch/DiffusionDPO train.py, DPO branch) is written
out here in NumPy from per-sample errors; the scorer + `dpo` must give the same value.
"""

import math

import numpy as np
import pytest
import torch

from dpokit.errors import ConfigError
from dpokit.losses import Needs, get_loss
from dpokit.reference import ModelReference
from dpokit.scoring import SCORERS, build_scorer
from dpokit.scoring.diffusion import DiffusionScorer, draw_noise, example_seed
from dpokit.data.images import ImageBatch


class TinyDenoiser(torch.nn.Module):
    """eps_theta(x_t, t, c) = conv(x_t) + a(t) + e(c): small, deterministic, differentiable."""

    def __init__(self, seed=0, channels=3, classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.time = torch.nn.Linear(1, channels)
        self.cls = torch.nn.Embedding(classes, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, x, t, class_labels=None):
        out = self.conv(x) + self.time(t.to(x.dtype).unsqueeze(1) / 1000.0)[:, :, None, None]
        if class_labels is not None:
            out = out + self.cls(class_labels)[:, :, None, None].to(x.dtype)
        return out


def scheduler(prediction_type="epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


def make_batch(b, m, seed, dtype=torch.float32, size=4, draw=0, offset=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand((b, m, 3, size, size), generator=g) * 2 - 1).to(dtype)
    return ImageBatch(images, {"class_labels": torch.randint(0, 3, (b,), generator=g)},
                      torch.arange(offset, offset + b), torch.full((b,), draw), [""] * b)


def naive_errors(model, sched, batch, seed, kind="epsilon"):
    """One sample at a time: its example's own (t, eps), x_t and target written out by hand."""
    abar = sched.alphas_cumprod.double()
    b, m = batch.images.shape[:2]
    out = torch.zeros(b, m, dtype=torch.float64)
    for i in range(b):
        eps, t = draw_noise(batch.images.shape[2:], [int(batch.indices[i])], [int(batch.draws[i])], seed, (0, 1000))
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        for j in range(m):
            x0 = batch.images[i, j].double()
            x_t = a * x0 + s * eps[0].double()
            target = {"epsilon": eps[0].double(), "v_prediction": a * eps[0].double() - s * x0, "sample": x0}[kind]
            with torch.no_grad():
                pred = model(x_t.unsqueeze(0).to(batch.images.dtype), t,
                             class_labels=batch.conditions["class_labels"][i:i + 1]).double()[0]
            out[i, j] = ((pred - target) ** 2).mean()
    return out


PAIRS = Needs(reference=True, data="pairs")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("b, m, seed", [(1, 2, 0), (3, 2, 1), (4, 3, 2)])
def test_scorer_matches_naive_loop(kind, b, m, seed):
    sched = scheduler(kind)
    policy, ref = TinyDenoiser(seed), TinyDenoiser(seed + 10)
    batch = make_batch(b, m, seed, draw=seed)
    scorer = DiffusionScorer(Needs(reference=True, data="lists"), sched, seed=7)
    e_pi, e_ref = scorer.errors(policy, batch, ref)
    np.testing.assert_allclose(e_pi.detach().double(), naive_errors(policy, sched, batch, 7, kind), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e_ref.double(), naive_errors(ref, sched, batch, 7, kind), rtol=1e-5, atol=1e-7)
    inputs = scorer.loss_inputs(policy, batch, ref)
    np.testing.assert_allclose(inputs.list_policy_logps.detach(), -e_pi.detach(), rtol=0, atol=0)
    np.testing.assert_allclose(inputs.list_reference_logps, -e_ref, rtol=0, atol=0)


def test_pairs_fill_the_pair_fields_and_only_what_is_needed():
    sched = scheduler()
    policy, ref = TinyDenoiser(0), TinyDenoiser(1)
    batch = make_batch(3, 2, 0)
    inputs = DiffusionScorer(PAIRS, sched).loss_inputs(policy, batch, ref)
    e = naive_errors(policy, sched, batch, 0)
    np.testing.assert_allclose(inputs.policy_chosen_logps.detach(), -e[:, 0], rtol=1e-5)
    np.testing.assert_allclose(inputs.policy_rejected_logps.detach(), -e[:, 1], rtol=1e-5)
    assert torch.equal(inputs.chosen_lengths, torch.ones(3))
    assert inputs.list_policy_logps is None and inputs.policy_chosen_token_logps is None
    free = DiffusionScorer(Needs(reference=False), sched).loss_inputs(policy, batch, None)
    assert free.reference_chosen_logps is None  # no reference pass for a reference-free loss


def test_noise_is_per_example_and_reproducible():
    sched = scheduler()
    policy = TinyDenoiser(0)
    scorer = DiffusionScorer(Needs(reference=False), sched, seed=3)
    whole = make_batch(4, 2, 5)
    e_whole, _ = scorer.errors(policy, whole)
    for i in range(4):  # the same example alone gets the same noise and t as inside the batch
        alone = ImageBatch(whole.images[i:i + 1], {"class_labels": whole.conditions["class_labels"][i:i + 1]},
                           whole.indices[i:i + 1], whole.draws[i:i + 1], [""])
        torch.testing.assert_close(scorer.errors(policy, alone)[0][0], e_whole[i])
    again = DiffusionScorer(Needs(reference=False), sched, seed=3)
    torch.testing.assert_close(again.errors(policy, whole)[0], e_whole)
    eps0, t0 = draw_noise((3, 4, 4), [0, 1], [0, 0], 3, (0, 1000))
    eps1, _ = draw_noise((3, 4, 4), [0, 1], [1, 1], 3, (0, 1000))
    assert not torch.equal(eps0, eps1) and not torch.equal(eps0[0], eps0[1])
    assert example_seed(3, 0, 0) != example_seed(3, 0, 1) != example_seed(4, 0, 0)


def test_chosen_and_rejected_share_noise_and_t():
    sched = scheduler()
    policy = TinyDenoiser(0)
    batch = make_batch(2, 2, 0)
    batch.images[:, 1] = batch.images[:, 0]  # identical samples: identical errors only with shared (t, eps)
    e, _ = DiffusionScorer(Needs(reference=False), sched).errors(policy, batch)
    torch.testing.assert_close(e[:, 0], e[:, 1], rtol=0, atol=0)


def test_policy_equal_reference_gives_log_2():
    sched = scheduler()
    policy = TinyDenoiser(0)
    reference = ModelReference(TinyDenoiser(0))
    inputs = build_scorer(None, PAIRS, sched, policy, kind="diffusion").loss_inputs(policy, make_batch(5, 2, 1),
                                                                                     reference)
    loss = get_loss("dpo", beta=2500.0)(inputs).loss
    torch.testing.assert_close(loss, torch.full((5,), math.log(2.0)), rtol=0, atol=1e-7)


def official_diffusion_dpo(mse_theta_w, mse_theta_l, mse_ref_w, mse_ref_l, beta_dpo):
    """SalesforceAIResearch/DiffusionDPO train.py: model_diff = mse_w - mse_l, ref_diff likewise,
    inside = -0.5 * beta_dpo * (model_diff - ref_diff), loss = -logsigmoid(inside)."""
    model_diff = mse_theta_w - mse_theta_l
    ref_diff = mse_ref_w - mse_ref_l
    inside = -0.5 * beta_dpo * (model_diff - ref_diff)
    return np.logaddexp(0.0, -inside)  # -log sigmoid(inside)


def diffusers_diffusion_dpo(mse_theta_w, mse_theta_l, mse_ref_w, mse_ref_l, beta_dpo):
    """diffusers train_diffusion_dpo.py, loss_type sigmoid: logits = ref_diff - model_diff."""
    logits = (mse_ref_w - mse_ref_l) - (mse_theta_w - mse_theta_l)
    return np.logaddexp(0.0, -beta_dpo * logits)


@pytest.mark.parametrize("seed, beta_dpo", [(0, 5000.0), (1, 2000.0), (2, 50.0)])
def test_dpo_through_the_scorer_is_official_diffusion_dpo(seed, beta_dpo):
    sched = scheduler()
    policy, ref = TinyDenoiser(seed).double(), TinyDenoiser(seed + 1).double()
    batch = make_batch(6, 2, seed, dtype=torch.float64)
    e_pi = naive_errors(policy, sched, batch, 0).numpy()
    e_ref = naive_errors(ref, sched, batch, 0).numpy()
    expected = official_diffusion_dpo(e_pi[:, 0], e_pi[:, 1], e_ref[:, 0], e_ref[:, 1], beta_dpo)
    inputs = DiffusionScorer(PAIRS, sched).loss_inputs(policy, batch, ref)
    got = get_loss("dpo", beta=0.5 * beta_dpo)(inputs).loss.detach().numpy()  # beta = beta_dpo / 2
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(diffusers_diffusion_dpo(e_pi[:, 0], e_pi[:, 1], e_ref[:, 0], e_ref[:, 1],
                                                       0.5 * beta_dpo), expected, rtol=1e-10)


def test_two_sample_plackett_luce_equals_diffusion_dpo():
    sched = scheduler()
    policy, ref = TinyDenoiser(3).double(), TinyDenoiser(4).double()
    batch = make_batch(5, 2, 3, dtype=torch.float64)
    pair_inputs = DiffusionScorer(PAIRS, sched).loss_inputs(policy, batch, ref)
    batch.list_scores = torch.tensor([[1.0, 0.0]]).repeat(5, 1)
    batch.list_mask = torch.ones(5, 2, dtype=torch.bool)
    pl = get_loss("plackett_luce", beta=300.0)
    list_inputs = DiffusionScorer(pl.needs, sched).loss_inputs(policy, batch, ref)
    torch.testing.assert_close(pl(list_inputs).loss, get_loss("dpo", beta=300.0)(pair_inputs).loss)


def test_gradcheck_of_the_surrogate_in_float64():
    sched = scheduler()
    model = TinyDenoiser(0).double()
    ref = TinyDenoiser(1).double()
    batch = make_batch(2, 2, 0, dtype=torch.float64)
    scorer = DiffusionScorer(PAIRS, sched)
    loss_fn = get_loss("dpo", beta=20.0)
    names = ["conv.weight", "time.bias"]

    def f(*params):
        def policy(x, t, **c):
            return torch.func.functional_call(model, dict(zip(names, params)), (x, t), c)
        return loss_fn(scorer.loss_inputs(policy, batch, ref)).loss

    params = [dict(model.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss", ["token_dpo", "tdpo", "orpo", "kto"])
def test_losses_the_scorer_cannot_serve_are_refused_when_built(loss):
    needs = get_loss(loss).needs
    with pytest.raises(ConfigError, match="diffusion scorer cannot compute"):
        build_scorer(None, needs, scheduler(), TinyDenoiser(0), kind="diffusion")


def test_registered_and_scheduler_checked():
    assert "diffusion" in SCORERS
    with pytest.raises(ConfigError, match="noise scheduler"):
        build_scorer(None, PAIRS, object(), TinyDenoiser(0), kind="diffusion")
    with pytest.raises(ConfigError, match="timestep_range"):
        DiffusionScorer(PAIRS, scheduler(), timestep_range=(10, 2000))


def test_unpaired_fields_and_a_diffusers_unet():
    from dpokit.tasks.bimodal import tiny_unet

    sched = scheduler()
    unet = tiny_unet(3, size=8)
    batch = make_batch(3, 1, 0, size=8)
    batch.labels = torch.tensor([True, False, True])
    inputs = DiffusionScorer(Needs(reference=True, data="unpaired"), sched).loss_inputs(unet, batch,
                                                                                         ModelReference(tiny_unet(3, 8)))
    assert inputs.policy_logps.shape == (3,) and inputs.reference_logps.shape == (3,)
    assert torch.equal(inputs.labels, batch.labels) and bool((inputs.policy_logps < 0).all())
    inputs.policy_logps.sum().backward()
    assert unet.conv_in.weight.grad is not None
