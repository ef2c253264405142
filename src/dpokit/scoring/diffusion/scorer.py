"""The diffusion scorer: the denoising surrogate of log-likelihood in the fields of ``LossInputs``.

For a batch of B examples, each holding M samples ``x0`` of one condition ``c`` (M = 2 for a pair,
M = K for a list, M = 1 for an unpaired example), with one timestep ``t`` and one noise ``eps``
shared by the M samples of the example (:mod:`.noise`):

    x_t     = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps            scheduler.add_noise
    e_pi(x) = mean_D (eps_theta(x_t, t, c) - target)^2                target = eps | v | x0 | eps - x0
    e_ref(x)= mean_D (eps_ref(x_t, t, c)   - target)^2                under no_grad
    lp(x) = -e_pi(x),  lr(x) = -e_ref(x)

(flow matching: ``x_t = (1 - sigma_t) x0 + sigma_t eps``, target the velocity ``eps - x0``, the
denoiser given ``sigma_t * T``; :func:`.noise.noised_and_target`.)

``D`` is the number of elements of a sample (C*H*W, or C*F*H*W for video): the error is averaged,
not summed, as in the official code (SalesforceAIResearch/DiffusionDPO ``train.py``, diffusers
``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py``), so that published ``beta``
values keep their meaning.

``lp`` and ``lr`` go where a language model's summed log-probs go: ``policy_chosen_logps = lp(x_w)``,
``reference_chosen_logps = lr(x_w)``, ... (pairs); ``list_policy_logps`` [B, K] (lists);
``policy_logps`` (unpaired). Lengths are 1. Then DPO's margin is

    h = (lp_w - lr_w) - (lp_l - lr_l) = -[(e_pi(x_w) - e_pi(x_l)) - (e_ref(x_w) - e_ref(x_l))]

and dpokit's ``dpo`` with ``beta`` computes Diffusion-DPO exactly:

    dpokit  -log sigmoid(beta * h)
    Salesforce DiffusionDPO train.py:   -logsigmoid(-0.5 * beta_dpo * (model_diff - ref_diff))
    diffusers train_diffusion_dpo.py:   -logsigmoid(beta_dpo * (ref_diff - model_diff))

so ``beta = 0.5 * beta_dpo`` (Salesforce; its published 5000 is beta 2500 here) and
``beta = beta_dpo`` (diffusers, default 2500). ``tests/scoring/diffusion`` checks this against the
official formula written out. The paper's ``beta * T * omega(lambda_t)`` with a sum over ``D``
corresponds to ``beta / D`` here (inferred from the code averaging over ``D``; the paper's equation
was not re-read).

``diffusion.x_t`` (:mod:`.inversion`): ``forward`` (the above), ``ddim_inversion`` (InPO) or
``renoise`` (SmPO): ``x_t`` and its noise target from inverting ``x0`` with a denoiser under
``no_grad``. A precomputed reference (:mod:`.cached`) replaces the reference forward by a lookup.

Video clips ``[C, F, H, W]`` are samples like images (``D = C*F*H*W``). For a loss that reads
per-segment surrogates (``dense_segment_dpo``), the same predictions are also reduced per segment of
frames (:mod:`.segments`) into ``extras["segment_policy_logps"]`` / ``["segment_reference_logps"]``.

One forward of the policy over all B*M samples (and one of the reference, under ``no_grad``). The
scorer computes only what the loss's ``Needs`` ask for, and refuses when built what it cannot serve:
per-token log-probs, vocabulary statistics, prompt log-probs and mismatched-KL terms have no
diffusion counterpart here.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...errors import ConfigError
from ...losses import LossInputs, Needs
from .noise import draw_noise, model_timesteps, noised_and_target, num_train_timesteps, prediction_type
from .segments import segment_errors, segment_extras, segment_plan, wants_segments


def refuse_unservable(needs: Needs) -> None:
    """Raise :class:`ConfigError` for the ``Needs`` a diffusion scorer has no counterpart for."""
    problems = []
    if needs.token_logps:
        problems.append("per-token log-probs (Needs.token_logps)")
    if needs.token_stats:
        problems.append(f"vocabulary statistics (Needs.token_stats={list(needs.token_stats)})")
    if needs.prompt_logps:
        problems.append("prompt log-probs (Needs.prompt_logps)")
    if needs.mismatched_kl:
        problems.append("mismatched-completion KL terms (Needs.mismatched_kl)")
    if problems:
        raise ConfigError("the diffusion scorer cannot compute " + "; ".join(problems) + " for this loss: "
                          "use a loss on sequence-level log-probs (dpo, ipo, hinge, listwise, unpaired ...)")


def _timestep_by_keyword(model) -> bool:
    """Diffusers transformers take ``timestep`` after their condition arguments (SD3: hidden_states,
    encoder_hidden_states, pooled_projections, timestep); UNets take it second."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "_orig_mod", base)  # torch.compile
    try:
        names = list(inspect.signature(getattr(base, "forward", base)).parameters)
    except (TypeError, ValueError):
        return False
    return "timestep" in names and names.index("timestep") != 1


def predict(model, x_t: torch.Tensor, t: torch.Tensor, conditions: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The denoiser's output at ``(x_t, t, c)``: a diffusers model (``.sample``), a tuple or a tensor."""
    out = model(x_t, timestep=t, **conditions) if _timestep_by_keyword(model) else model(x_t, t, **conditions)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_D (prediction - target)^2`` per sample: [N, *S] -> [N], in float32 at least (fp16/bf16
    predictions are upcast; float64 stays float64)."""
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    return (prediction.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)


class DiffusionScorer:
    """Scores batches of images (or videos) for the loss whose ``needs`` it was built for.

    ``scheduler``: a diffusers noise scheduler with ``add_noise`` (DDPM/DDIM; ``get_velocity`` for
    v-prediction). ``seed``: the run seed the per-example noise is drawn from. ``timestep_range``:
    ``[lo, hi)`` of the uniform timestep draw, the whole ``[0, T)`` by default.

    A batch has ``images`` [B, M, *S] (values the denoiser is trained on, e.g. pixels in [-1, 1] or
    VAE latents), ``conditions`` (keyword tensors of the denoiser with leading dimension B, e.g.
    ``encoder_hidden_states`` or ``class_labels``), ``indices`` and ``draws`` [B] (the noise seeds), and
    for lists ``list_mask`` / ``list_scores`` [B, K], for unpaired data ``labels`` [B], ``extras``.
    """

    def __init__(self, needs: Needs, scheduler, seed: int = 0, timestep_range: Optional[Tuple[int, int]] = None,
                 inversion=None, encode=None):
        refuse_unservable(needs)
        self.inversion = inversion  # None: forward noising; else an .inversion.Inversion
        self.encode = encode  # captions -> conditions (for a precomputed reference)
        self.needs = needs
        self.scheduler = scheduler
        self.seed = int(seed)
        self.prediction_type = prediction_type(scheduler)
        total = num_train_timesteps(scheduler)
        lo, hi = timestep_range or (0, total)
        if not 0 <= lo < hi <= total:
            raise ConfigError(f"diffusion scorer: timestep_range must satisfy 0 <= lo < hi <= {total}, got {(lo, hi)}")
        self.timestep_range = (int(lo), int(hi))
        # control(x_t, t, conditions) -> conditions: adds what a frozen conditioning model computes at
        # (x_t, t), once for policy and reference (ControlNet residuals: dpokit.diffusion_control)
        self.control = None

    def external_parameters(self, model) -> List[Any]:
        return []

    # ---- the surrogate -------------------------------------------------------------------
    def noise(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The shared ``eps`` [B, *S] and ``t`` [B] of each example of ``batch``."""
        images = batch.images
        eps, t = draw_noise(images.shape[2:], [int(i) for i in batch.indices], [int(d) for d in batch.draws],
                            self.seed, self.timestep_range)
        return eps.to(images.device, images.dtype), t.to(images.device)

    def prepare(self, batch, policy=None, reference=None):
        """``(x_t, model timesteps, target, conditions)`` of the B*M flattened samples of ``batch``:
        forward noising with the shared ``eps``, or an inversion of ``x0`` (:mod:`.inversion`)."""
        images = batch.images
        b, m = images.shape[:2]
        sample_shape = images.shape[2:]
        eps, t = self.noise(batch)
        x0 = images.reshape(b * m, *sample_shape)
        eps = eps.unsqueeze(1).expand(b, m, *sample_shape).reshape(b * m, *sample_shape)
        t = t.repeat_interleave(m)
        conditions = {k: v.repeat_interleave(m, dim=0) for k, v in (batch.conditions or {}).items()}
        if self.inversion is not None:
            eps = self._inverted_noise(policy, reference, batch, x0, t, conditions, m)
        x_t, target = noised_and_target(self.scheduler, x0, eps, t, self.prediction_type)
        t = model_timesteps(self.scheduler, t, self.prediction_type).to(x_t.device)
        if self.control is not None:  # once for policy and reference: what the frozen ControlNet adds
            conditions = self.control(x_t, t, conditions)
        return x_t, t, target, conditions

    def _inverted_noise(self, policy, reference, batch, x0, t, conditions, m):
        from .cached import _reference_model

        inverter = policy if self.inversion.model == "policy" else reference
        if inverter is None or getattr(inverter, "has_model", True) is False:
            raise ValueError(f"diffusion.x_t {self.inversion.mode}: inversion_model {self.inversion.model!r} needs "
                             "a denoiser to invert with")
        with _reference_model(inverter) as model:
            _, eps = self.inversion.invert(lambda x, tau, c: predict(model, x, tau, c), x0, t, conditions,
                                           [int(i) for i in batch.indices], [int(d) for d in batch.draws], m)
        return eps.detach()

    def reference_forward(self, model, batch) -> torch.Tensor:
        """``e_ref`` [B, M] of ``model`` (under ``no_grad``); what a precomputed reference stores."""
        b, m = batch.images.shape[:2]
        x_t, t, target, conditions = self.prepare(batch)
        with torch.no_grad():
            return per_sample_error(predict(model, x_t, t, conditions), target).view(b, m)

    def errors(self, policy, batch, reference=None,
               segments: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-sample denoising errors ``e_pi`` and ``e_ref`` (or None), each [B, M]. With a dict
        ``segments``, also the per-segment errors of video samples from the same predictions
        (:mod:`.segments`): ``segments["policy"]``, ``segments["reference"]`` [B, M, S]."""
        b, m = batch.images.shape[:2]
        x_t, t, target, conditions = self.prepare(batch, policy, reference)
        plan = segment_plan(batch, m) if segments is not None else None
        prediction = predict(policy, x_t, t, conditions)
        e_policy = per_sample_error(prediction, target).view(b, m)
        if plan is not None:
            segments["policy"] = segment_errors(prediction, target, *plan).view(b, m, -1)
        e_reference = None
        if self.needs.reference:
            if reference is None:
                raise ValueError("this loss needs a reference denoiser, but none was given")
            if hasattr(reference, "errors") and not getattr(reference, "has_model", True):  # precomputed
                if plan is not None:
                    raise ValueError("a precomputed reference holds whole-sample errors; a per-segment loss "
                                     "(dense_segment_dpo) needs a live reference")
                return e_policy, reference.errors(batch).to(e_policy.dtype)
            with torch.no_grad():
                if hasattr(reference, "active"):  # dpokit.reference objects
                    with reference.active() as model:
                        ref_prediction = predict(model, x_t, t, conditions)
                else:
                    ref_prediction = predict(reference, x_t, t, conditions)
                e_reference = per_sample_error(ref_prediction, target).view(b, m)
                if plan is not None:
                    segments["reference"] = segment_errors(ref_prediction, target, *plan).view(b, m, -1)
        return e_policy, e_reference

    def precompute_reference(self, config, reference, examples, cache_dir: str, device=None, world_size: int = 1):
        """The reference errors of ``examples`` at every draw of the run, computed once and stored
        under ``cache_dir`` (``reference.precompute``; :mod:`.cached`)."""
        from .cached import precompute, run_draws

        if self.encode is None:
            raise ConfigError("reference.precompute: the diffusion scorer was built without a condition encoder")
        n_train = sum(1 for _ in examples)
        return precompute(self, reference, examples, run_draws(config, n_train, world_size), self.encode,
                          config.train.batch_size, cache_dir, device)

    def loss_inputs(self, policy, batch, reference=None) -> LossInputs:
        segments: Optional[Dict[str, Any]] = {} if wants_segments(self.needs) else None
        e_policy, e_reference = self.errors(policy, batch, reference, segments)
        lp = -e_policy
        lr = None if e_reference is None else -e_reference
        ones = torch.ones(lp.shape, device=lp.device)
        inputs = LossInputs()
        kind = self.needs.data
        if kind == "pairs":
            if lp.shape[1] != 2:
                raise ValueError(f"pairs need 2 samples per example, the batch holds {lp.shape[1]}")
            inputs.policy_chosen_logps, inputs.policy_rejected_logps = lp[:, 0], lp[:, 1]
            if lr is not None:
                inputs.reference_chosen_logps, inputs.reference_rejected_logps = lr[:, 0], lr[:, 1]
            inputs.chosen_lengths, inputs.rejected_lengths = ones[:, 0], ones[:, 1]
        elif kind == "lists":
            mask = getattr(batch, "list_mask", None)
            mask = torch.ones(lp.shape, dtype=torch.bool, device=lp.device) if mask is None else mask.to(lp.device)
            inputs.list_policy_logps = lp.masked_fill(~mask, 0.0)
            if lr is not None:
                inputs.list_reference_logps = lr.masked_fill(~mask, 0.0)
            inputs.list_lengths = ones
            inputs.list_mask = mask
            scores = getattr(batch, "list_scores", None)
            inputs.list_scores = None if scores is None else scores.to(lp.device)
        else:  # unpaired
            inputs.policy_logps = lp[:, 0]
            inputs.reference_logps = None if lr is None else lr[:, 0]
            inputs.lengths = ones[:, 0]
            inputs.labels = batch.labels.to(lp.device)
        inputs.extras = {k: v.to(lp.device) for k, v in (getattr(batch, "extras", None) or {}).items()}
        if segments is not None:  # DenseDPO: per-segment surrogates of the same predictions
            inputs.extras.update(segment_extras(segments))
        return inputs


def diffusion_scorer(config, needs: Needs, scheduler, model) -> DiffusionScorer:
    """Registry factory: ``scheduler`` is what the diffusion model family loads next to the denoiser
    (where a language model's family loads the tokenizer): a noise scheduler, or an object holding
    one as ``.scheduler`` (:class:`dpokit.diffusion_family.DiffusionAssets`). The seed is
    ``config.train.seed``; ``config.diffusion.timestep_range`` bounds the timestep draw."""
    seed = getattr(getattr(config, "train", None), "seed", 0) if config is not None else 0
    timestep_range = getattr(getattr(config, "diffusion", None), "timestep_range", None)
    encode = getattr(scheduler, "conditioner", None)
    control = getattr(scheduler, "control", None)  # DiffusionAssets of a pipeline with a controlnet/
    scheduler = getattr(scheduler, "scheduler", scheduler)
    if not hasattr(scheduler, "add_noise") and not hasattr(scheduler, "scale_noise"):
        raise ConfigError("the diffusion scorer needs a noise scheduler with add_noise (e.g. diffusers "
                          f"DDPMScheduler), got {type(scheduler).__name__}")
    from .inversion import build_inversion

    inversion = build_inversion(config, scheduler, prediction_type(scheduler), seed) if config is not None else None
    if inversion is not None and control is not None:
        raise ConfigError(f"diffusion.x_t: {inversion.mode} is not supported with a ControlNet pipeline (the "
                          "inversion would run without the ControlNet residuals); use diffusion.x_t: forward")
    scorer = DiffusionScorer(needs, scheduler, seed=seed,
                             timestep_range=tuple(timestep_range) if timestep_range else None, inversion=inversion,
                             encode=encode)
    scorer.control = control
    return scorer
