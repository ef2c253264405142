"""``x_t`` by inverting ``x0`` with a denoiser: DDIM inversion (InPO) and ReNoise inversion (SmPO).

``diffusion.x_t: forward`` (the default) noises ``x0`` with the drawn ``eps`` (``scheduler.add_noise``).
The two inversion modes instead walk ``x0`` up a grid of ``n`` inverse DDIM steps with a denoiser
under ``no_grad`` and use the noise the result implies as the regression target, as the official
InPO and SmPO ``train.py`` do (read in JaydenLyh/InPO and JaydenLyh/SmPO; ``../shared/DIFFUSION.md``
sections 2-3):

    grid      tau_k = k * T // n, k = 0..n-1            (DDIMInverseScheduler.set_timesteps(n), offset 0)
    one step  from level p = tau - T // n (abar_p = 1 when p < 0) to level tau, with e = eps_hat(x, tau, c):
              x0_hat = (x - sqrt(1 - abar_p) e) / sqrt(abar_p)
              x     <- sqrt(abar_tau) x0_hat + sqrt(1 - abar_tau) e           (DDIMInverseScheduler.step)
    ddim_inversion (InPO): for every tau < t: one step; then, with inversion_eta > 0,
              x <- x + eta * z * sqrt(var(min(tau + T // n, T - 1), tau)),
              var(s, r) = (1 - abar_r)/(1 - abar_s) (1 - abar_s/abar_r)
    renoise (SmPO): for every tau < t: e1 = eps_hat(x, tau); x1 = step(e1, x); e2 = eps_hat(x1, tau);
              x <- step((e1 + e2) / 2, x)
    target    eps_t = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)   (abar of the drawn t, as the code: the walk
              stops at the last grid point below t)
    x_t       = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_t = x

so the scorer's usual target (``eps_t``; the velocity of ``eps_t`` for v-prediction) and errors
follow. The winner and the loser of a pair are inverted separately (they share ``t``, not the
noise), as in the code. The predicted ``x0`` is not clipped. The inverting denoiser is the current
policy (``diffusion.inversion_model: policy``, as both official scripts) or the reference
(``reference``, which makes ``x_t`` a fixed function of the example and the draw). The ``eta``
noise ``z`` is drawn per (seed, example, draw) from its own stream.

[partial] Verified against the code only: the InPO paper's reparameterisation and the SmPO
paper's derivation of ReNoise were not read; the eta-noise variance is the code's
``_get_variance(tau + T/10, tau)`` read as the DDIM variance above (as summarised in DIFFUSION.md);
at the last grid point ``tau + T/n`` is ``T``, past the schedule, and dpokit takes level ``T - 1``
there (the official code's behaviour at that point was not checked).
Epsilon-prediction is what the official code trains; v-prediction and sample targets convert the
model output to ``(x0_hat, e)`` as diffusers' inverse scheduler does (not in the official code).
Flow-matching schedulers are refused.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch

from ...errors import ConfigError
from .noise import example_seed, num_train_timesteps

X_T_MODES = ("forward", "ddim_inversion", "renoise")
INVERSION_MODELS = ("policy", "reference")
ETA_STREAM = 0x1E7A  # mixed into the example seed: the eta noise is its own stream


def _abar(alphas_cumprod: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``abar`` at integer ``level`` [N] (1 where ``level < 0``)."""
    values = alphas_cumprod.to(level.device)[level.clamp_min(0)]
    return torch.where(level < 0, torch.ones_like(values), values)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def model_to_eps_x0(output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor, kind: str):
    """The model output at level ``abar`` as ``(x0_hat, eps_hat)`` for its ``prediction_type``."""
    a, s = _view(abar.sqrt(), x), _view((1 - abar).sqrt(), x)
    if kind == "epsilon":
        return (x - s * output) / a, output
    if kind == "v_prediction":
        return a * x - s * output, a * output + s * x
    if kind == "sample":
        return output, (x - a * output) / s
    raise ConfigError(f"diffusion.x_t: inversion does not support prediction_type {kind!r}")


def inverse_step(output: torch.Tensor, tau: torch.Tensor, x: torch.Tensor, alphas_cumprod: torch.Tensor,
                 stride: int, kind: str = "epsilon") -> torch.Tensor:
    """One inverse DDIM step from level ``tau - stride`` to ``tau`` (per sample ``tau`` [N])."""
    x0_hat, eps = model_to_eps_x0(output, x, _abar(alphas_cumprod, tau - stride), kind)
    abar = _abar(alphas_cumprod, tau)
    return _view(abar.sqrt(), x) * x0_hat + _view((1 - abar).sqrt(), x) * eps


def ddim_variance(alphas_cumprod: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``(1 - abar_r)/(1 - abar_s) * (1 - abar_s / abar_r)`` (DDIM's sigma^2 between levels s > r)."""
    a_s, a_r = _abar(alphas_cumprod, s), _abar(alphas_cumprod, r)
    return (1 - a_r) / (1 - a_s) * (1 - a_s / a_r)


class Inversion:
    """Computes the inverted ``x`` and the implied noise ``eps_t`` of flattened samples."""

    def __init__(self, scheduler, mode: str, steps: int = 10, eta: float = 0.0, model: str = "policy",
                 prediction_type: str = "epsilon", seed: int = 0):
        if mode not in X_T_MODES[1:]:
            raise ConfigError(f"diffusion.x_t: {mode!r} is not one of {', '.join(X_T_MODES)}")
        if model not in INVERSION_MODELS:
            raise ConfigError(f"diffusion.inversion_model: {model!r} is not one of {', '.join(INVERSION_MODELS)}")
        if not hasattr(scheduler, "alphas_cumprod") or prediction_type == "flow":
            raise ConfigError("diffusion.x_t: DDIM/ReNoise inversion needs a DDPM-style scheduler (alphas_cumprod); "
                              "flow-matching schedulers are not supported")
        total = num_train_timesteps(scheduler)
        if not 1 <= int(steps) <= total:
            raise ConfigError(f"diffusion.inversion_steps must be in [1, {total}], got {steps}")
        if eta < 0:
            raise ConfigError(f"diffusion.inversion_eta must be >= 0, got {eta}")
        if eta and mode == "renoise":
            raise ConfigError("diffusion.inversion_eta: the ReNoise inversion (SmPO) adds no noise; leave it 0")
        self.mode, self.steps, self.eta, self.model, self.kind = mode, int(steps), float(eta), model, prediction_type
        self.seed = int(seed)
        self.stride = total // self.steps
        self.grid = [k * self.stride for k in range(self.steps)]
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)

    def eta_noise(self, shape: Sequence[int], indices: Sequence[int], draws: Sequence[int], m: int,
                  k: int) -> torch.Tensor:
        """``z`` [B*M, *shape] of grid step ``k``, per (seed, example, draw, sample)."""
        out = []
        for index, draw in zip(indices, draws):
            g = torch.Generator().manual_seed(example_seed(self.seed ^ ETA_STREAM, index, draw * 4096 + k))
            out.append(torch.randn((m,) + tuple(shape), generator=g))
        return torch.cat(out)

    @torch.no_grad()
    def invert(self, predict: Callable, x0: torch.Tensor, t: torch.Tensor, conditions: Dict[str, torch.Tensor],
               indices: Optional[Sequence[int]] = None, draws: Optional[Sequence[int]] = None, m: int = 1):
        """``(x, eps_t)`` for samples ``x0`` [N, *S] at drawn ``t`` [N]; ``predict(x, tau, conditions)``
        is the inverting denoiser. ``indices``/``draws`` [N / m] seed the eta noise."""
        acp = self.alphas_cumprod.to(x0.device)
        x = x0.clone()
        for k, tau in enumerate(self.grid):
            rows = (t > tau).nonzero().flatten()
            if rows.numel() == 0:
                break
            taus = torch.full((rows.numel(),), tau, dtype=torch.long, device=x0.device)
            cond = {key: v[rows] for key, v in conditions.items()}
            xs = x[rows]
            e1 = predict(xs, taus, cond).to(x.dtype)
            new = inverse_step(e1, taus, xs, acp, self.stride, self.kind)
            if self.mode == "renoise":
                e2 = predict(new, taus, cond).to(x.dtype)
                new = inverse_step((e1 + e2) / 2, taus, xs, acp, self.stride, self.kind)
            elif self.eta:
                z = self.eta_noise(x0.shape[1:], indices, draws, m, k).to(x0.device, x0.dtype)[rows]
                # the level above the last grid point is T (out of the schedule): the last level, T - 1
                var = ddim_variance(acp, (taus + self.stride).clamp_max(len(acp) - 1), taus)
                new = new + self.eta * z * _view(var.sqrt(), new)
            x[rows] = new
        abar = _abar(acp, t)
        eps = (x - _view(abar.sqrt(), x0) * x0) / _view((1 - abar).sqrt(), x0)
        return x, eps


def build_inversion(config, scheduler, prediction_type: str, seed: int) -> Optional[Inversion]:
    """The :class:`Inversion` ``config.diffusion`` asks for (None for ``x_t: forward``)."""
    d = getattr(config, "diffusion", None)
    mode = getattr(d, "x_t", "forward") or "forward"
    if mode == "forward":
        return None
    return Inversion(scheduler, mode, getattr(d, "inversion_steps", 10), getattr(d, "inversion_eta", 0.0),
                     getattr(d, "inversion_model", "policy"), prediction_type, seed)
