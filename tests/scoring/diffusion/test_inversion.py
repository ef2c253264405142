"""DDIM inversion (InPO) and ReNoise inversion (SmPO) of the diffusion scorer, against a NumPy loop
written from the official code's steps, diffusers' own inverse step, and a round trip on a toy whose
exact denoiser is known (a Gaussian data distribution)."""

import json

import numpy as np
import pytest
import torch

from dpokit.config import from_dict
from dpokit.errors import ConfigError
from dpokit.losses import Needs
from dpokit.scoring.diffusion import DiffusionScorer, draw_noise
from dpokit.scoring.diffusion.inversion import Inversion, build_inversion, inverse_step

from .test_scorer import TinyDenoiser, make_batch, scheduler

PAIRS = Needs(reference=True, data="pairs")


def numpy_invert(model, x0, t, labels, n, abar, mode="ddim_inversion"):
    """The official loop, one sample at a time, in float64: for tau in grid with tau < t: step."""
    stride = 1000 // n
    out_x, out_eps = [], []
    for i in range(x0.shape[0]):
        x = x0[i].astype(np.float64)

        def eps_hat(v, tau):
            with torch.no_grad():
                return model(torch.from_numpy(v[None]).double(), torch.tensor([tau]),
                             class_labels=torch.tensor([labels[i]])).numpy()[0]

        def step(e, tau, v):
            a_p = 1.0 if tau - stride < 0 else abar[tau - stride]
            x0_hat = (v - np.sqrt(1 - a_p) * e) / np.sqrt(a_p)
            return np.sqrt(abar[tau]) * x0_hat + np.sqrt(1 - abar[tau]) * e

        for tau in range(0, 1000, stride):
            if not tau < t[i]:
                break
            e1 = eps_hat(x, tau)
            if mode == "renoise":
                x1 = step(e1, tau, x)
                e2 = eps_hat(x1, tau)
                x = step((e1 + e2) / 2, tau, x)
            else:
                x = step(e1, tau, x)
        a = abar[t[i]]
        out_x.append(x)
        out_eps.append((x - np.sqrt(a) * x0[i]) / np.sqrt(1 - a))
    return np.stack(out_x), np.stack(out_eps)


@pytest.mark.parametrize("mode", ["ddim_inversion", "renoise"])
@pytest.mark.parametrize("n,seed", [(10, 0), (5, 1), (20, 2)])
def test_inversion_matches_a_numpy_loop(mode, n, seed):
    sched = scheduler()
    model = TinyDenoiser(seed).double()
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((6, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 1, 99, 101, 555, 999])
    labels = torch.randint(0, 3, (6,), generator=g)
    inv = Inversion(sched, mode, steps=n)
    x, eps = inv.invert(lambda v, tau, c: model(v, tau, **c), x0, t, {"class_labels": labels})
    want_x, want_eps = numpy_invert(model, x0.numpy(), t.numpy(), labels.numpy(), n,
                                    sched.alphas_cumprod.double().numpy(), mode)
    np.testing.assert_allclose(x.numpy(), want_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(eps.numpy(), want_eps, rtol=1e-9, atol=1e-9)
    assert torch.equal(x[0], x0[0])  # t = 0: no grid point below it


def test_inverse_step_is_diffusers_ddim_inverse_step():
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler(num_train_timesteps=1000, clip_sample=False)
    inverse.set_timesteps(10)
    acp = scheduler().alphas_cumprod.double()
    x, e = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for tau in inverse.timesteps.tolist()[:4]:
        want = inverse.step(e, tau, x).prev_sample
        got = inverse_step(e, torch.tensor([tau, tau]), x, acp, 100)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-6)


class GaussianDenoiser:
    """The exact epsilon predictor when x0 ~ N(mu, s^2 I): E[eps | x_t]."""

    def __init__(self, abar, mu, s):
        self.abar, self.mu, self.s = abar, mu, s

    def __call__(self, x, t, conditions=None):
        a = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s ** 2 + 1 - a)


def test_invert_then_ddim_sample_reconstructs_on_a_gaussian_toy():
    from diffusers import DDIMScheduler

    sched = scheduler()
    acp = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    mu, s = 0.3, 0.5
    x0 = mu + s * torch.randn((16, 3, 4, 4), generator=g, dtype=torch.float64)
    model = GaussianDenoiser(acp, mu, s)
    errors = {}
    for n in (10, 50):
        x, _ = Inversion(sched, "ddim_inversion", steps=n).invert(model, x0, torch.full((16,), 999), {})
        sampler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
        sampler.set_timesteps(n)
        assert sampler.timesteps[0] == 1000 - 1000 // n  # the inversion ended on the sampler's first level
        for tau in sampler.timesteps.tolist():
            x = sampler.step(model(x, torch.tensor([tau] * 16)), tau, x).prev_sample
        errors[n] = float(((x - x0) ** 2).mean())
    unrelated = 2 * s ** 2  # mean squared distance between two independent samples
    assert errors[50] < errors[10] < 0.1 * unrelated  # reconstructs, better with more steps
    assert errors[50] < 0.01 * unrelated


def test_scorer_uses_the_inverted_x_t_and_its_implied_noise():
    sched = scheduler()
    policy, reference = TinyDenoiser(0), TinyDenoiser(1)
    batch = make_batch(3, 2, seed=4)
    inv = Inversion(sched, "ddim_inversion", steps=10)
    scorer = DiffusionScorer(PAIRS, sched, seed=5, inversion=inv)
    e_pi, e_ref = scorer.errors(policy, batch, reference)
    eps, t = draw_noise(batch.images.shape[2:], batch.indices.tolist(), batch.draws.tolist(), 5, (0, 1000))
    x0 = batch.images.reshape(6, 3, 4, 4)
    t6 = t.repeat_interleave(2)
    labels = batch.conditions["class_labels"].repeat_interleave(2)
    x, implied = inv.invert(lambda v, tau, c: policy(v, tau, **c), x0, t6, {"class_labels": labels})
    with torch.no_grad():
        want_pi = ((policy(x, t6, class_labels=labels) - implied) ** 2).flatten(1).mean(1).view(3, 2)
        want_ref = ((reference(x, t6, class_labels=labels) - implied) ** 2).flatten(1).mean(1).view(3, 2)
    torch.testing.assert_close(e_pi.detach(), want_pi, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e_ref, want_ref, rtol=1e-4, atol=1e-5)
    e_pi.sum().backward()  # the policy still gets gradients through its scored forward
    assert policy.conv.weight.grad is not None
    forward = DiffusionScorer(PAIRS, sched, seed=5).errors(policy, batch, reference)[0]
    renoise = DiffusionScorer(PAIRS, sched, seed=5, inversion=Inversion(sched, "renoise", steps=10))
    assert not torch.allclose(forward, e_pi) and not torch.allclose(renoise.errors(policy, batch, reference)[0], e_pi)
    by_reference = DiffusionScorer(PAIRS, sched, seed=5, inversion=Inversion(sched, "ddim_inversion", model="reference"))
    x_ref, implied_ref = inv.invert(lambda v, tau, c: reference(v, tau, **c), x0, t6, {"class_labels": labels})
    with torch.no_grad():
        want = ((policy(x_ref, t6, class_labels=labels) - implied_ref) ** 2).flatten(1).mean(1).view(3, 2)
    torch.testing.assert_close(by_reference.errors(policy, batch, reference)[0].detach(), want, rtol=1e-4, atol=1e-5)


def test_eta_noise_is_seeded_per_example_and_draw():
    sched = scheduler()
    policy = TinyDenoiser(0)
    batch = make_batch(2, 2, seed=1)
    noisy = DiffusionScorer(PAIRS, sched, seed=0, inversion=Inversion(sched, "ddim_inversion", eta=0.1))
    plain = DiffusionScorer(PAIRS, sched, seed=0, inversion=Inversion(sched, "ddim_inversion"))
    a, b = noisy.errors(policy, batch, policy)[0], noisy.errors(policy, batch, policy)[0]
    assert torch.equal(a, b) and not torch.allclose(a, plain.errors(policy, batch, policy)[0])
    other_draw = make_batch(2, 2, seed=1, draw=1)
    assert not torch.allclose(a, noisy.errors(policy, other_draw, policy)[0])


def test_eta_noise_against_numpy_up_to_the_last_grid_point():
    """eta > 0 adds eta * z * sqrt(var(min(tau + T/n, T - 1), tau)) after each step, also for t above the
    last grid point (where tau + T/n = T is past the schedule)."""
    sched = scheduler()
    model = TinyDenoiser(3).double()
    n, eta = 10, 0.3
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand((4, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([950, 999, 905, 120])
    labels = torch.randint(0, 3, (4,), generator=g)
    inv = Inversion(sched, "ddim_inversion", steps=n, eta=eta)
    indices, draws = [0, 1, 2, 3], [0, 0, 0, 0]
    x, eps = inv.invert(lambda v, tau, c: model(v, tau, **c), x0, t, {"class_labels": labels}, indices, draws)
    abar = sched.alphas_cumprod.double().numpy()
    stride = 1000 // n
    for i in range(4):
        v = x0[i].numpy().copy()
        for k, tau in enumerate(range(0, 1000, stride)):
            if not tau < t[i]:
                break
            with torch.no_grad():
                e = model(torch.from_numpy(v[None]), torch.tensor([tau]), class_labels=labels[i:i + 1]).numpy()[0]
            a_p = 1.0 if tau - stride < 0 else abar[tau - stride]
            v = np.sqrt(abar[tau]) * (v - np.sqrt(1 - a_p) * e) / np.sqrt(a_p) + np.sqrt(1 - abar[tau]) * e
            upper = min(tau + stride, 999)
            var = (1 - abar[tau]) / (1 - abar[upper]) * (1 - abar[upper] / abar[tau])
            z = inv.eta_noise(x0.shape[1:], [indices[i]], [draws[i]], 1, k)[0].double().numpy()
            v = v + eta * z * np.sqrt(var)
        np.testing.assert_allclose(x[i].numpy(), v, rtol=1e-6, atol=1e-6)
        a = abar[t[i]]
        np.testing.assert_allclose(eps[i].numpy(), (v - np.sqrt(a) * x0[i].numpy()) / np.sqrt(1 - a),
                                   rtol=1e-5, atol=1e-5)


def test_config_and_refusals():
    sched = scheduler()
    config = from_dict({"model": {"kind": "diffusion", "name_or_path": "x"}, "data": {"train": "x"},
                        "diffusion": {"x_t": "renoise", "inversion_steps": 5}})
    inv = build_inversion(config, sched, "epsilon", 0)
    assert inv.mode == "renoise" and inv.grid == [0, 200, 400, 600, 800]
    assert build_inversion(from_dict({"model": {"name_or_path": "x"}, "data": {"train": "x"}}), sched, "epsilon", 0) is None
    with pytest.raises(ConfigError, match="diffusion.x_t"):
        from_dict({"model": {"name_or_path": "x"}, "data": {"train": "x"}, "diffusion": {"x_t": "sde"}})
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ConfigError, match="flow-matching"):
        Inversion(FlowMatchEulerDiscreteScheduler(), "ddim_inversion", prediction_type="flow")
    with pytest.raises(ConfigError, match="eta"):
        Inversion(sched, "renoise", eta=0.1)


@pytest.mark.parametrize("x_t,loss", [("ddim_inversion", "inpo"), ("renoise", "smpo")])
def test_dpokit_train_with_an_inverted_x_t(tmp_path, x_t, loss):
    from dpokit.preflight import check_run
    from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = tmp_path / "data"
    save_image_pairs(str(data), 4)
    rows = [dict(json.loads(line), chosen_score=0.3, rejected_score=0.1) for line in open(data / "pairs.jsonl")]
    (data / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"model": {"name_or_path": model_dir, "kind": "diffusion", "dtype": "float32"},
           "data": {"train": str(data / ("scored.jsonl" if loss == "smpo" else "pairs.jsonl"))},
           "loss": {"name": loss, "beta": 5.0, **({"score_min": 0.0, "score_max": 1.0} if loss == "smpo" else {})},
           "diffusion": {"x_t": x_t, "inversion_steps": 2},
           "train": {"output_dir": str(tmp_path / "run"), "lr": 1e-3, "batch_size": 2, "epochs": 1, "report_to": [],
                     "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant"}}
    trainer = Trainer(from_dict(raw))
    assert trainer.scorer.inversion.mode == x_t and trainer.scorer.inversion.grid == [0, 500]
    assert trainer.fit()["status"] == "completed"
    raw["reference"] = {"precompute": True}
    with pytest.raises(ConfigError, match="reference.precompute"):
        check_run(from_dict(raw))
