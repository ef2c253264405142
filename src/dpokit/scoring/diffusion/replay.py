"""Online trajectories of a denoiser and the replay buffer Diffusion-DRO trains on.

Diffusion-DRO (Wu et al. 2025, arXiv 2510.18353; official basiclab/DiffusionDRO ``train.py`` and
``misc/buffer.py``, read for this module) ranks an expert image against the policy's *own* samples.
The samples come from a lagged copy of the policy, sampled with per-sample perturbed timesteps, and a
replay buffer keeps the last ``buffer_size`` trajectories. One trajectory of ``T`` steps stores, for
every step ``k``:

    xt[k]   the sampler's input at step k (xt[0] = x_T, the initial noise)
    t[k]    the timestep of step k (descending in k)
    eps[k]  the lagged model's own prediction at (xt[k], t[k], c): the training target of the policy sample

plus, per trajectory, the condition ``c`` (prompt embedding or class label) and the expert ``x0`` of
that prompt. A training sample is a random (trajectory, step) pair; the expert is noised with fresh
noise at the same ``t`` and condition. The official buffer pushes ``x_T`` first, then the latents
after each step, and trims to ``T`` entries, so ``xt[k]``, ``t[k]`` and ``eps[k]`` refer to the same
step; :func:`sample_trajectories` records exactly that.

Timesteps (:func:`perturbed_timesteps`): the grid ``t_k = (T_train / steps) * (steps - 1 - k)`` with one
offset per sample, drawn from ``[0, T_train / steps)`` and added to every grid point of that sample
(``perturb = randint(0, step_ratio, (1, batch))`` in the official code).

Sampler: DPMSolver++ (diffusers ``DPMSolverMultistepScheduler``, order 2, 20 steps, guidance 1.0, as
the official buffer sampler), each sample stepped by its own scheduler state on its own timesteps
(the official code patches the scheduler to do the same); the model forward is batched.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch

from ...errors import ConfigError
from .scorer import predict

Tensor = torch.Tensor


def perturbed_timesteps(num_steps: int, batch: int, num_train_timesteps: int = 1000,
                        generator: Optional[torch.Generator] = None, perturb: bool = True) -> Tensor:
    """Timesteps [batch, num_steps] (int64, descending per row): ``t_k + offset``, ``t_k = r * (num_steps
    - 1 - k)``, ``r = num_train_timesteps // num_steps``, one ``offset ~ U{0, ..., r - 1}`` per row
    (0 with ``perturb=False``)."""
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ratio = num_train_timesteps // num_steps
    grid = (torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * ratio).unsqueeze(0)  # [1, S]
    offset = (torch.randint(0, ratio, (batch, 1), generator=generator) if perturb
              else torch.zeros(batch, 1, dtype=torch.long))
    return grid + offset


def buffer_sampler(scheduler):
    """The DPMSolver++ scheduler (order 2) built from the training scheduler's config."""
    from diffusers import DPMSolverMultistepScheduler

    if not hasattr(scheduler, "alphas_cumprod"):
        raise ConfigError("Diffusion-DRO's online sampler needs a DDPM-type noise scheduler (alphas_cumprod); "
                          f"got {type(scheduler).__name__} (flow matching is not supported here)")
    return DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++", solver_order=2)


@torch.no_grad()
def sample_trajectories(model, scheduler, conditions: Dict[str, Tensor], x_T: Tensor,
                        timesteps: Tensor) -> Dict[str, Tensor]:
    """Sample from ``x_T`` [B, *S] on per-sample ``timesteps`` [B, T]; returns ``xt`` [B, T, *S] (the
    input of each step), ``t`` [B, T], ``eps`` [B, T, *S] (the model's prediction at each step's
    input) and ``x0`` [B, *S] (the final sample). ``scheduler``: a diffusers scheduler whose
    ``set_timesteps`` takes custom ``timesteps`` (one deep copy per sample holds that sample's
    multistep state)."""
    b, steps = timesteps.shape
    if x_T.shape[0] != b:
        raise ValueError(f"x_T has {x_T.shape[0]} samples, timesteps {b}")
    states = []
    for i in range(b):
        state = copy.deepcopy(scheduler)
        state.set_timesteps(timesteps=[int(v) for v in timesteps[i]], device=x_T.device)
        states.append(state)
    was_training = model.training
    model.eval()
    x = x_T
    xs: List[Tensor] = []
    preds: List[Tensor] = []
    timesteps = timesteps.to(x_T.device)
    for k in range(steps):
        t = timesteps[:, k]
        out = predict(model, x, t, conditions)
        xs.append(x)
        preds.append(out)
        x = torch.stack([states[i].step(out[i:i + 1], t[i], x[i:i + 1]).prev_sample[0] for i in range(b)])
    model.train(was_training)
    return {"xt": torch.stack(xs, 1), "t": timesteps.clone(), "eps": torch.stack(preds, 1), "x0": x}


class ReplayBuffer:
    """The last ``size`` trajectories: time-dependent fields [N, T, ...] (``xt``, ``t``, ``eps``) and
    per-trajectory fields [N, ...] (``x0`` of the expert, condition tensors ``cond/<name>``)."""

    TIME_KEYS = ("xt", "t", "eps")

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {size}")
        self.size = int(size)
        self.fields: Dict[str, Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.fields else int(self.fields["t"].shape[0])

    def add(self, trajectories: Dict[str, Tensor], expert: Tensor, conditions: Dict[str, Tensor]) -> None:
        """Append B trajectories (from :func:`sample_trajectories`), their experts [B, *S] and conditions,
        then keep the last ``size``."""
        rows = {k: trajectories[k].detach() for k in self.TIME_KEYS}
        b, steps = rows["t"].shape
        if rows["xt"].shape[:2] != (b, steps) or rows["eps"].shape != rows["xt"].shape:
            raise ValueError(f"trajectory shapes disagree: xt {tuple(rows['xt'].shape)}, eps "
                             f"{tuple(rows['eps'].shape)}, t {tuple(rows['t'].shape)}")
        if not bool((rows["t"][:, :-1] > rows["t"][:, 1:]).all()):
            raise ValueError("trajectory timesteps must be strictly descending")
        rows["x0"] = expert.detach()
        rows.update({f"cond/{k}": v.detach() for k, v in conditions.items()})
        for key, value in rows.items():
            if value.shape[0] != b:
                raise ValueError(f"buffer field {key!r}: {value.shape[0]} rows for {b} trajectories")
            old = self.fields.get(key)
            joined = value if old is None else torch.cat([old, value.to(old.device)])
            self.fields[key] = joined[-self.size:]
        if set(self.fields) != set(rows):
            raise ValueError(f"buffer fields changed: had {sorted(self.fields)}, got {sorted(rows)}")

    def sample(self, batch: int, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """``batch`` random (trajectory, step) pairs: ``xt``, ``t``, ``eps`` [batch, ...] of that step and
        the trajectory's ``x0`` and ``cond/*``. Trajectories without replacement when ``batch <= N``
        (as the official buffer), with replacement otherwise; the step is uniform."""
        n = len(self)
        if n == 0:
            raise ValueError("the replay buffer is empty")
        steps = self.fields["t"].shape[1]
        rows = torch.randperm(n, generator=generator)[:batch] if batch <= n else \
            torch.randint(0, n, (batch,), generator=generator)
        cols = torch.randint(0, steps, (batch,), generator=generator)
        device = self.fields["t"].device
        rows, cols = rows.to(device), cols.to(device)
        out = {key: (value[rows, cols] if key in self.TIME_KEYS else value[rows]) for key, value in self.fields.items()}
        out["rows"], out["steps"] = rows, cols
        return out
