"""Diffusion-DRO's online part: perturbed timesteps, trajectories, the replay buffer, the lagged copy."""

import json
import os

import pytest
import torch

from dpokit.errors import ConfigError
from dpokit.online.diffusion_dro import DiffusionDRO, DROSettings
from dpokit.scoring.diffusion.replay import ReplayBuffer, buffer_sampler, perturbed_timesteps, sample_trajectories
from dpokit.tasks.bimodal import BimodalTask, noise_scheduler, tiny_unet


class Affine(torch.nn.Module):
    """eps_hat = a * x + t / 1000 + class: its output names the step it was given."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, class_labels=None):
        out = self.a * x + (t.float() / 1000).view(-1, 1, 1, 1)
        if class_labels is not None:
            out = out + 0.01 * class_labels.float().view(-1, 1, 1, 1)
        return out


# ---- the timestep grid --------------------------------------------------------------------------------
def test_perturbed_timesteps_within_grid_cells():
    t = perturbed_timesteps(20, 256, 1000, torch.Generator().manual_seed(0))
    grid = torch.arange(19, -1, -1) * 50  # t_k = 950, 900, ..., 0
    assert t.shape == (256, 20) and t.dtype == torch.long
    offset = t - grid
    assert bool((offset >= 0).all()) and bool((offset < 50).all())  # t in [t_k, t_k + 1000/steps)
    assert bool((offset == offset[:, :1]).all())  # one offset per sample, as the official code
    assert len(set(offset[:, 0].tolist())) > 25  # per-sample: the rows differ
    assert bool((t[:, :-1] > t[:, 1:]).all()) and int(t.max()) < 1000
    torch.testing.assert_close(perturbed_timesteps(20, 3, 1000, perturb=False), grid.expand(3, 20))
    assert perturbed_timesteps(7, 2, 1000, perturb=False)[0].tolist() == [852, 710, 568, 426, 284, 142, 0]


# ---- trajectories -------------------------------------------------------------------------------------
def test_trajectory_steps_are_aligned():
    model, sampler = Affine(), buffer_sampler(noise_scheduler())
    x_T = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    timesteps = perturbed_timesteps(6, 3, 1000, torch.Generator().manual_seed(2))
    cond = {"class_labels": torch.tensor([0, 1, 2])}
    out = sample_trajectories(model, sampler, cond, x_T, timesteps)
    assert out["xt"].shape == (3, 6, 3, 4, 4) and out["eps"].shape == out["xt"].shape
    torch.testing.assert_close(out["xt"][:, 0], x_T)  # x_T first
    torch.testing.assert_close(out["t"], timesteps)
    for k in range(6):  # eps[k] is the model's output at (xt[k], t[k]): the same step
        with torch.no_grad():
            torch.testing.assert_close(out["eps"][:, k], model(out["xt"][:, k], out["t"][:, k], **cond))
    for i in range(3):  # xt[k + 1] is the DPMSolver++ step of xt[k] on this sample's own timesteps
        alone = buffer_sampler(noise_scheduler())
        alone.set_timesteps(timesteps=timesteps[i].tolist())
        x = x_T[i:i + 1]
        for k in range(6):
            x = alone.step(out["eps"][i:i + 1, k], timesteps[i, k], x).prev_sample
            target = out["xt"][i, k + 1] if k < 5 else out["x0"][i]
            torch.testing.assert_close(x[0], target)


def test_per_sample_stepping_equals_batched_sampler_on_a_shared_grid():
    model, scheduler = Affine(), noise_scheduler()
    x_T = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    grid = perturbed_timesteps(10, 4, 1000, perturb=False)
    out = sample_trajectories(model, buffer_sampler(scheduler), {}, x_T, grid)
    batched = buffer_sampler(scheduler)
    batched.set_timesteps(timesteps=grid[0].tolist())  # one scheduler, one batched step per grid point
    x = x_T
    with torch.no_grad():
        for t in batched.timesteps:
            x = batched.step(model(x, t.expand(4)), t, x).prev_sample
    torch.testing.assert_close(out["x0"], x)


# ---- the buffer -----------------------------------------------------------------------------------------
def marked(ids, steps=5):
    """Trajectories whose contents name (trajectory id, step)."""
    n = len(ids)
    ids_t = torch.tensor(ids, dtype=torch.float32).view(n, 1, 1, 1, 1)
    k = torch.arange(steps, dtype=torch.float32).view(1, steps, 1, 1, 1)
    xt = (1000 * ids_t + k).expand(n, steps, 3, 2, 2).clone()
    t = (torch.arange(steps - 1, -1, -1) * 100).unsqueeze(0).repeat(n, 1) + torch.tensor(ids).view(n, 1)
    return {"xt": xt, "t": t, "eps": xt + 0.5}, torch.tensor(ids, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2)


def test_buffer_keeps_the_last_trajectories_and_samples_aligned_steps():
    buffer = ReplayBuffer(4)
    for ids in ([0, 1], [2, 3], [4, 5]):
        traj, x0 = marked(ids)
        buffer.add(traj, x0, {"class_labels": torch.tensor(ids)})
    assert len(buffer) == 4
    assert buffer.fields["cond/class_labels"].tolist() == [2, 3, 4, 5]  # trimmed to the last buffer_size
    sample = buffer.sample(64, torch.Generator().manual_seed(0))
    ident = sample["cond/class_labels"].float()
    assert set(ident.tolist()) == {2.0, 3.0, 4.0, 5.0}
    steps = sample["steps"].float()
    torch.testing.assert_close(sample["xt"][:, 0, 0, 0], 1000 * ident + steps)
    torch.testing.assert_close(sample["eps"][:, 0, 0, 0], 1000 * ident + steps + 0.5)
    torch.testing.assert_close(sample["t"].float(), (4 - steps) * 100 + ident)
    torch.testing.assert_close(sample["x0"][:, 0, 0, 0], ident)
    small = buffer.sample(3, torch.Generator().manual_seed(1))  # without replacement when batch <= N
    assert len(set(small["rows"].tolist())) == 3


def test_buffer_refuses_misaligned_trajectories():
    traj, x0 = marked([0, 1])
    bad = dict(traj, t=traj["t"].flip(1))
    with pytest.raises(ValueError, match="descending"):
        ReplayBuffer(2).add(bad, x0, {})
    with pytest.raises(ValueError, match="rows"):
        ReplayBuffer(2).add(traj, x0[:1], {})
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2).sample(1)


# ---- the loop -------------------------------------------------------------------------------------------
def small_dro(model=None, **options):
    task = BimodalTask(num_classes=2)
    generator = torch.Generator().manual_seed(0)
    classes = torch.tensor([0, 1, 0, 1, 0, 1])
    experts = task.sample(classes, generator, mode_a_fraction=1.0)
    settings = DROSettings.from_dict({"batch_size": 2, "buffer_size": 2, "buffer_batch_size": 2,
                                      "buffer_num_inference_steps": 2, "lr": 1e-2, **options})
    return DiffusionDRO(model if model is not None else tiny_unet(2), noise_scheduler(), experts, {"class_labels": classes}, settings)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_lagged_copy_is_refreshed_exactly_every_n_steps():
    dro = small_dro(Affine(), buffer_update_steps=3)
    snapshots = {0: params(dro.policy)}
    sampled_with = []
    refill = dro.refill

    def recording_refill():
        sampled_with.append(params(dro.lagged))
        refill()

    dro.refill = recording_refill
    for s in range(1, 8):
        dro.train_step()
        snapshots[s] = params(dro.policy)
        assert same(params(dro.lagged), snapshots[3 * (s // 3)])  # reloaded after steps 3 and 6 only
    assert dro.refreshes == [3, 6]
    assert not same(snapshots[6], snapshots[7]) and not same(snapshots[0], snapshots[3])
    # the trajectories of step s come from the policy of step 3 * ((s - 1) // 3)
    assert len(sampled_with) == 7
    for s, weights in enumerate(sampled_with, start=1):
        assert same(weights, snapshots[3 * ((s - 1) // 3)])


def test_loss_is_the_official_hinge_on_expert_and_buffer_sample():
    dro = small_dro()
    dro.refill()
    sample = dro.buffer.sample(2, torch.Generator().manual_seed(5))
    state = dro.generator.get_state()
    inputs = dro.loss_inputs(sample)
    value = dro.loss_fn(inputs).loss
    # written out as the official train.py computes it, with the same expert noise
    generator = torch.Generator()
    generator.set_state(state)
    eps_e = torch.randn(sample["x0"].shape, generator=generator)
    t = sample["t"]
    xt = torch.cat([dro.scheduler.add_noise(sample["x0"], eps_e, t), sample["xt"]])
    eps = torch.cat([eps_e, sample["eps"]])
    c = torch.cat([sample["cond/class_labels"]] * 2)
    with torch.no_grad():
        pol = (dro.policy(xt, torch.cat([t, t]), class_labels=c).sample - eps).square().mean(dim=[1, 2, 3])
        ref = (dro.reference.model(xt, torch.cat([t, t]), class_labels=c).sample - eps).square().mean(dim=[1, 2, 3])
    diff = (pol[:2] - ref[:2]) - (pol[2:] - ref[2:])
    torch.testing.assert_close(value.detach(), torch.clamp(diff + 0.001, min=0.0))


def test_first_steps_match_the_reference_and_settings_are_checked():
    dro = small_dro()
    row = dro.train_step()  # policy == reference at step 1: both scores 0, loss = margin
    assert row["loss"] == pytest.approx(0.001) and row["buffer_size"] == 2
    assert row["mse_expert_minus_ref"] == 0.0 and row["mse_policy_minus_ref"] == 0.0
    with pytest.raises(ConfigError, match="unknown option"):
        DROSettings.from_dict({"buffer_szie": 3})
    with pytest.raises(ConfigError, match="buffer_update_steps"):
        DROSettings.from_dict({"buffer_update_steps": 0})
    parsed = DROSettings.from_dict({"lr": "5e-4", "buffer_update_steps": "8", "buffer_perturb_timesteps": "false"})
    assert (parsed.lr, parsed.buffer_update_steps, parsed.buffer_perturb_timesteps) == (5e-4, 8, False)
    with pytest.raises(ConfigError, match="margin must be a float"):
        DROSettings.from_dict({"margin": "wide"})
    assert DROSettings().margin == 0.001 and DROSettings().buffer_update_steps == 16


@pytest.mark.slow
def test_demo_with_diffusion_dro_quick(tmp_path):
    from dpokit.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--modality", "diffusion", "--quick", "--output-dir", out, "--loss", "diffusion_dro",
                 "--hparam", "buffer_update_steps=4"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["loss"] == "diffusion_dro" and summary["steps"] == 8 and summary["expert_images"] == 32
    assert summary["train_pairs"] == 0 and "fraction_in_A" in summary["after"]
    rows = [json.loads(line) for line in open(os.path.join(out, "train", "metrics.jsonl"))]
    assert len(rows) == 8 and all("mse_policy_minus_ref" in r for r in rows)
