"""Noise, timesteps and regression targets of the denoising surrogate.

Every example draws its own timestep ``t`` and noise ``eps`` from a generator seeded by
``(seed, example index, draw)``; the ``draw`` counter is the visit of the example (its epoch in a
trainer run, the step in a hand-written loop). The draw therefore depends only on which example is
scored and when, never on the batch it sits in or on the process that scores it, and a resumed run
draws exactly the noise an uninterrupted one would. The chosen and rejected sample of a pair (and
the K samples of a list) share the example's ``t`` and ``eps``, as in the official Diffusion-DPO code
(``noise.chunk(2)[0].repeat(2, 1, 1, 1)``, same for the timesteps).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence, Tuple

import torch

from ...errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def example_seed(seed: int, index: int, draw: int) -> int:
    """A 63-bit seed mixed from ``(seed, index, draw)`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{int(seed)}/{int(index)}/{int(draw)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def draw_noise(sample_shape: Sequence[int], indices: Sequence[int], draws: Sequence[int], seed: int,
               timestep_range: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``eps`` [B, *sample_shape] (float32, CPU) and ``t`` [B] (int64), one draw per example.

    ``t`` is uniform on ``[lo, hi)`` (``timestep_range``), drawn before ``eps`` from the same generator.
    """
    lo, hi = timestep_range
    eps, ts = [], []
    for index, draw in zip(indices, draws):
        generator = torch.Generator().manual_seed(example_seed(seed, index, draw))
        ts.append(torch.randint(lo, hi, (1,), generator=generator))
        eps.append(torch.randn(tuple(sample_shape), generator=generator))
    return torch.stack(eps), torch.cat(ts)


def is_flow_matching(scheduler) -> bool:
    """A rectified-flow scheduler (diffusers ``FlowMatchEulerDiscreteScheduler``: ``scale_noise``, no
    ``add_noise``)."""
    return hasattr(scheduler, "scale_noise") and not hasattr(scheduler, "add_noise")


def prediction_type(scheduler) -> str:
    if is_flow_matching(scheduler):
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            raise ConfigError("diffusion scorer: a flow-matching scheduler with use_dynamic_shifting (resolution-"
                              "dependent shift) is not supported; set a fixed shift")
        return "flow"
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"diffusion scorer: scheduler prediction_type {kind!r} is not one of "
                          f"{', '.join(PREDICTION_TYPES)}")
    return kind


def num_train_timesteps(scheduler) -> int:
    return int(scheduler.config.num_train_timesteps)


def flow_sigma(scheduler, t: torch.Tensor) -> torch.Tensor:
    """Noise level of timestep index ``t`` (0: least noise) of a flow-matching scheduler:
    ``sigma = shift*u / (1 + (shift-1)*u)`` with ``u = (t+1)/T``, which is the scheduler's own training
    grid (``scheduler.sigmas`` before ``set_timesteps``, read from the end)."""
    total = num_train_timesteps(scheduler)
    shift = float(getattr(scheduler.config, "shift", 1.0))
    u = (t.to(torch.float64) + 1.0) / total
    return shift * u / (1.0 + (shift - 1.0) * u)


def model_timesteps(scheduler, t: torch.Tensor, kind: Optional[str] = None) -> torch.Tensor:
    """What the denoiser is given as its timestep: ``t`` itself, or ``sigma * T`` for flow matching (as
    the diffusers SD3 training scripts feed ``timesteps = sigmas * num_train_timesteps``)."""
    kind = kind or prediction_type(scheduler)
    if kind != "flow":
        return t
    return (flow_sigma(scheduler, t) * num_train_timesteps(scheduler)).to(torch.float32)


def noised_and_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                      kind: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (``scheduler.add_noise``) and what the
    denoiser is trained to predict there: ``eps`` (epsilon), ``scheduler.get_velocity(x0, eps, t)``
    (v_prediction) or ``x0`` (sample), per the scheduler's ``prediction_type``.

    Flow matching (``kind`` "flow", a rectified-flow scheduler): ``x_t = (1 - sigma) x0 + sigma eps``
    and the velocity target ``eps - x0``, as the diffusers SD3 training scripts compute them; no
    official flow-matching Diffusion-DPO code was read, so the use of this target in the preference
    losses follows third-party implementations (unverified against a primary source)."""
    kind = kind or prediction_type(scheduler)
    if kind == "flow":
        sigma = flow_sigma(scheduler, t).to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return (1.0 - sigma) * x0 + sigma * eps, eps - x0
    x_t = scheduler.add_noise(x0, eps, t)
    if kind == "epsilon":
        return x_t, eps
    if kind == "v_prediction":
        return x_t, scheduler.get_velocity(x0, eps, t)
    return x_t, x0
