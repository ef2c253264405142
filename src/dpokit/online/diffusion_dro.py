"""Diffusion-DRO's online training: expert images against the policy's own lagged samples.

Wu, Ruan, Tseng, Shuai 2025, arXiv 2510.18353 (NeurIPS 2025); the loop follows the official
basiclab/DiffusionDRO ``train.py`` (read; the paper's theory was not). Only **positive** data are
needed: expert images with their conditions. Three denoisers take part:

* the policy (trained),
* a frozen reference (the starting denoiser),
* a lagged sampling copy of the policy, reloaded from the trained denoiser every
  ``buffer_update_steps`` steps (default 16).

One step ``s = 1, 2, ...``:

1. if the buffer is empty or ``s % buffer_sample_steps == 0``: draw ``buffer_batch_size`` experts
   ``(x0, c)``, sample one trajectory each from the lagged copy (DPMSolver++ 20 steps on
   per-sample perturbed timesteps, :mod:`dpokit.scoring.diffusion.replay`) and push it with its
   ``c`` and ``x0``; the buffer keeps the last ``buffer_size`` trajectories (an empty buffer is
   filled with enough batches for one training batch);
2. draw ``batch_size`` random (trajectory, step) pairs: the policy sample ``(x_t_p, t, eps_p)``,
   ``eps_p`` the lagged model's prediction at ``x_t_p``; noise the trajectory's expert with fresh
   noise at the same ``t``: ``x_t_e = add_noise(x0, eps_e, t)`` (target ``eps_e``, or ``v``);
3. ``L = mean max(0, s_e - s_p + margin)``, ``s = mse(eps_theta, target) - mse(eps_ref, target)``
   (the registered ``diffusion_dro`` loss, expert as the chosen sample, policy sample as the
   rejected one); AdamW step (gradient clipping at ``max_grad_norm``: the official script's
   clipping receives an exhausted iterator and does nothing, see ``../shared`` notes; 0 turns it off);
4. if ``s % buffer_update_steps == 0``: lagged copy <- policy.

Defaults are the official ones: margin 0.001, lr 1e-4 constant, AdamW, ``batch_size`` 4,
``buffer_size`` 4, ``buffer_batch_size`` 4, ``buffer_sample_steps`` 1, ``buffer_update_steps`` 16,
20 sampler steps, perturbed timesteps on, guidance 1.0 (conditional prediction only).
Not done here [partial]: the official run's gradient accumulation (16, where the step counter counts
micro-steps), EMA weights, mixed precision, prompt dropout (``random_drop_prompt_probability`` 0.2,
which needs an empty-prompt condition) and the VAE (pass latents as experts for latent models).
Docs: ``docs/diffusion.md`` (Diffusion-DRO online), ``docs/losses/diffusion.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import ConfigError
from ..losses import LossInputs, get_loss
from ..reference import ModelReference
from ..scoring.diffusion import noised_and_target, per_sample_error, predict
from ..scoring.diffusion.noise import prediction_type
from ..scoring.diffusion.replay import ReplayBuffer, buffer_sampler, perturbed_timesteps, sample_trajectories

Tensor = torch.Tensor


@dataclass
class DROSettings:
    """Hyperparameters of :class:`DiffusionDRO` (official defaults)."""

    margin: float = 0.001
    lr: float = 1e-4
    weight_decay: float = 0.01  # torch AdamW's default, as the official optimizer
    batch_size: int = 4
    buffer_size: int = 4
    buffer_batch_size: int = 4
    buffer_sample_steps: int = 1
    buffer_update_steps: int = 16
    buffer_num_inference_steps: int = 20
    buffer_perturb_timesteps: bool = True
    max_grad_norm: float = 1.0
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "DROSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"diffusion_dro: unknown option(s) {unknown}; known: {sorted(known)}")
        defaults = cls()
        typed = {}
        for key, value in values.items():
            kind = type(getattr(defaults, key))
            try:
                if kind is bool and isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    typed[key] = value.lower() in ("true", "1")
                else:
                    typed[key] = kind(float(value)) if kind is int else kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"diffusion_dro: {key} must be a {kind.__name__}, got {value!r}") from None
        settings = cls(**typed)
        for name in ("batch_size", "buffer_size", "buffer_batch_size", "buffer_sample_steps", "buffer_update_steps",
                     "buffer_num_inference_steps"):
            if int(getattr(settings, name)) < 1:
                raise ConfigError(f"diffusion_dro: {name} must be >= 1, got {getattr(settings, name)}")
        return settings


class DiffusionDRO:
    """The online Diffusion-DRO loop on a denoiser.

    ``model``: the denoiser to train (its initial weights become the frozen reference unless
    ``reference`` is given: a :mod:`dpokit.reference` object or a module); ``scheduler``: its DDPM-type
    training scheduler; ``experts`` [N, *S]: expert images (or latents) in the range the denoiser is
    trained on; ``conditions``: the denoiser's keyword conditions with leading dimension N
    (``class_labels``, ``encoder_hidden_states``, ...), row i the condition of expert i.
    """

    def __init__(self, model: torch.nn.Module, scheduler, experts: Tensor, conditions: Dict[str, Tensor],
                 settings: Optional[DROSettings] = None, reference=None):
        self.settings = settings or DROSettings()
        s = self.settings
        if experts.dim() < 2 or experts.shape[0] == 0:
            raise ValueError(f"experts: expected [N, *sample_shape] with N >= 1, got {tuple(experts.shape)}")
        for key, value in conditions.items():
            if value.shape[0] != experts.shape[0]:
                raise ValueError(f"conditions[{key!r}] has {value.shape[0]} rows for {experts.shape[0]} experts")
        self.prediction_type = prediction_type(scheduler)
        if self.prediction_type == "flow":
            raise ConfigError("diffusion_dro online: flow-matching schedulers are not supported (DPMSolver++ "
                              "trajectories need a DDPM-type scheduler)")
        self.policy = model
        self.scheduler = scheduler
        self.sampler = buffer_sampler(scheduler)
        self.experts, self.conditions = experts, conditions
        if reference is None:
            reference = ModelReference(copy.deepcopy(model))
        elif isinstance(reference, torch.nn.Module):
            reference = ModelReference(reference)
        self.reference = reference
        self.lagged = copy.deepcopy(model).requires_grad_(False).eval()
        self.buffer = ReplayBuffer(s.buffer_size)
        self.loss_fn = get_loss("diffusion_dro", margin=s.margin)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr,
                                           weight_decay=s.weight_decay)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.step = 0
        self.refreshes: List[int] = []  # steps after which the lagged copy was reloaded
        self._order: List[int] = []

    # ---- the buffer --------------------------------------------------------------------------
    def _next_experts(self, n: int) -> Tensor:
        out = []
        while len(out) < n:  # epochs of a seeded permutation, as a shuffled data loader
            if not self._order:
                self._order = torch.randperm(self.experts.shape[0], generator=self.generator).tolist()
            out.append(self._order.pop())
        return torch.tensor(out, dtype=torch.long)

    def refill(self) -> None:
        """Sample ``buffer_batch_size`` trajectories from the lagged copy and push them (with experts)."""
        s = self.settings
        device = self.experts.device
        index = self._next_experts(s.buffer_batch_size).to(device)
        x0, cond = self.experts[index], {k: v[index] for k, v in self.conditions.items()}
        x_T = torch.randn(x0.shape, generator=self.generator).to(device, x0.dtype)
        total = int(self.scheduler.config.num_train_timesteps)
        timesteps = perturbed_timesteps(s.buffer_num_inference_steps, x0.shape[0], total, self.generator,
                                        s.buffer_perturb_timesteps)
        trajectories = sample_trajectories(self.lagged, self.sampler, cond, x_T, timesteps.to(device))
        self.buffer.add(trajectories, x0, cond)

    def refresh_lagged(self) -> None:
        self.lagged.load_state_dict(self.policy.state_dict())
        self.refreshes.append(self.step)

    # ---- the loss -----------------------------------------------------------------------------
    def loss_inputs(self, sample: Dict[str, Tensor]) -> LossInputs:
        """``LossInputs`` of pairs: chosen = the noised expert, rejected = the buffer's policy sample,
        same ``t`` and condition; ``lp = -e_pi``, ``lr = -e_ref`` as the diffusion scorer writes them."""
        x0, t = sample["x0"], sample["t"]
        eps_e = torch.randn(x0.shape, generator=self.generator).to(x0.device, x0.dtype)
        xt_e, target_e = noised_and_target(self.scheduler, x0, eps_e, t, self.prediction_type)
        b = x0.shape[0]
        x_t = torch.cat([xt_e, sample["xt"].to(xt_e.dtype)])
        target = torch.cat([target_e, sample["eps"].to(target_e.dtype)])
        tt = torch.cat([t, t])
        cond = {k[len("cond/"):]: torch.cat([v, v]) for k, v in sample.items() if k.startswith("cond/")}
        e_pi = per_sample_error(predict(self.policy, x_t, tt, cond), target)
        with torch.no_grad(), self.reference.active() as ref:
            e_ref = per_sample_error(predict(ref, x_t, tt, cond), target)
        inputs = LossInputs()
        inputs.policy_chosen_logps, inputs.policy_rejected_logps = -e_pi[:b], -e_pi[b:]
        inputs.reference_chosen_logps, inputs.reference_rejected_logps = -e_ref[:b], -e_ref[b:]
        ones = torch.ones(b, device=e_pi.device)
        inputs.chosen_lengths, inputs.rejected_lengths = ones, ones
        return inputs

    def train_step(self) -> Dict[str, float]:
        s = self.settings
        self.step += 1
        if len(self.buffer) == 0:
            for _ in range(max(1, -(-s.batch_size // s.buffer_batch_size))):
                self.refill()
        elif self.step % s.buffer_sample_steps == 0:
            self.refill()
        self.policy.train()
        inputs = self.loss_inputs(self.buffer.sample(s.batch_size, self.generator))
        out = self.loss_fn(inputs)
        loss = out.loss.mean()
        loss.backward()
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad], s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step % s.buffer_update_steps == 0:
            self.refresh_lagged()
        s_e = -(inputs.policy_chosen_logps - inputs.reference_chosen_logps).detach()
        s_p = -(inputs.policy_rejected_logps - inputs.reference_rejected_logps).detach()
        return {"step": self.step, "loss": float(loss.detach()), "mse_expert_minus_ref": float(s_e.mean()),
                "mse_policy_minus_ref": float(s_p.mean()), "diff": float((s_e - s_p).mean()),
                "buffer_size": len(self.buffer), **{k: float(v) for k, v in out.metrics.items()}}

    def train(self, steps: int, log: Optional[Callable[[Dict[str, float]], None]] = None) -> List[Dict[str, float]]:
        history = []
        for _ in range(steps):
            row = self.train_step()
            history.append(row)
            if log is not None:
                log(row)
        return history
