"""The scorer seam: what turns a batch and models into the inputs of a loss.

A loss never sees a model. It is a pure function of :class:`~dpokit.losses.LossInputs`, and its
registry entry declares what it reads (:class:`~dpokit.losses.Needs`). A *scorer* fills exactly that
from a batch, the policy and the reference; the trainer, the evaluation and the online rounds call
it and know neither the method nor the modality.

    scorer = build_scorer(config, needs, tokenizer, model)     # once per run (refuses what it cannot serve)
    inputs = scorer.loss_inputs(policy, batch, reference)      # every micro-batch
    loss   = loss_fn(inputs).loss

What fills the fields, per modality:

* **language models** (:mod:`dpokit.scoring.lm`): ``policy_chosen_logps`` etc. are summed completion
  log-probs ``log pi(y | x)``; per-token log-probs, masks, lengths, vocabulary statistics and the
  ``list_*`` fields when the loss's ``Needs`` ask for them. Layouts and chunked projection are the
  scorer's business.
* **diffusion models** (:mod:`dpokit.scoring.diffusion`, kind ``"diffusion"``): for a sample ``x_0`` with condition ``c``,
  timestep ``t`` and noise ``eps`` shared by the chosen and rejected sample of a pair (or a whole
  group), the denoising surrogate of the log-likelihood is
  ``lp(x) = -w(t) * mean_D (eps_theta(x_t, t, c) - eps)^2`` and ``lr(x)`` the same with the frozen
  reference denoiser, written into the same fields (``policy_chosen_logps = lp(x_w)``,
  ``reference_chosen_logps = lr(x_w)``, ...). Then ``lp - lr`` plays the role of the LM log-ratio:
  Diffusion-DPO *is* the ``dpo`` loss (``beta = 0.5 * beta_dpo`` of the official Salesforce code,
  ``= beta_dpo`` of the diffusers script; docs/diffusion.md), listwise losses read
  ``list_policy_logps`` of K samples with shared noise, and ``lengths`` are 1. Timestep sampling,
  shared noise, inversion for ``x_t`` and per-region masks live in that scorer and its data, never in
  the trainer. A scorer that cannot fill a field a loss needs refuses it when it is built
  (:func:`build_scorer` raises), not in the middle of training.
* **vision-language models** (:mod:`dpokit.scoring.vlm`, kind ``"vlm"``): the LM scorer with the
  images' features in the prompt: one vision-tower pass per batch, the features a table that the
  prompt's image tokens index (virtual ids), so every LM layout, prompt-shared included, runs
  unchanged (docs/vlm.md). The third argument of the factory is the model's processor.
* **step-level methods** (:mod:`dpokit.scoring.steps`, kind ``"steps"``): the LM scorer plus the step
  index of every completion token, so losses sum log-probs per reasoning step (segment masks).

The reference is opaque to the trainer: the scorer and the reference objects of
:mod:`dpokit.reference` agree on how reference values are obtained (for the LM scorer,
``reference.token_logprobs(scorer, batch)``, which a precomputed cache answers from disk).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

from ..losses import LossInputs, Needs
from .lm.engine import LogProbEngine
from .lm.layouts import check_layout


@runtime_checkable
class Scorer(Protocol):
    """Turns a batch into :class:`~dpokit.losses.LossInputs` for the loss whose ``needs`` it was built for.

    ``needs``: the :class:`~dpokit.losses.Needs` it serves (fixed at construction; it computes nothing
    else: no reference pass for a reference-free loss, no vocabulary statistics unless asked).

    ``loss_inputs(policy, batch, reference)``: the loss's inputs for one micro-batch; gradients flow
    to the policy only. ``reference`` is None for reference-free losses.

    ``external_parameters(model)``: parameters the scorer reads outside ``model``'s own forward (the
    LM head of the chunked projection), which ZeRO-3 must gather for it; ``[]`` for most scorers.
    """

    needs: Needs

    def loss_inputs(self, policy: Any, batch: Any, reference: Any = None) -> LossInputs: ...

    def external_parameters(self, model: Any) -> List[Any]: ...


SCORERS: Dict[str, Callable[..., Scorer]] = {}
SCORER_CHECKS: Dict[str, Callable[..., None]] = {}


def register_scorer(name: str, check: Optional[Callable[..., None]] = None):
    """Register a scorer factory ``factory(config, needs, tokenizer, model) -> Scorer`` under ``name``;
    the factory raises :class:`~dpokit.errors.ConfigError` for a model or layout it cannot serve.
    ``check(config, needs)`` (optional) refuses, before any model loads, a run the scorer cannot serve
    (raising ``ValueError`` with the reason); :func:`check_scorer` runs it.

    A scorer may also offer ``prepare_examples(examples) -> examples``: the trainer passes the loaded
    records through it before tokenization (the step scorer turns step pairs into token-id pairs)."""

    def decorator(factory):
        SCORERS[name] = factory
        if check is not None:
            SCORER_CHECKS[name] = check
        return factory

    return decorator


def check_scorer(config, needs: Needs) -> None:
    """``train.scorer`` names a registered kind and its check accepts the run (``ValueError`` otherwise)."""
    kind = config.train.scorer
    if kind is None:  # the model family's own scorer
        return
    if kind not in SCORERS:
        raise ValueError(f"{kind!r} is not one of {', '.join(sorted(SCORERS))}")
    check = SCORER_CHECKS.get(kind)
    if check is not None:
        check(config, needs)


@register_scorer("causal_lm")
def _lm_scorer(config, needs: Needs, tokenizer, model) -> Scorer:
    check_layout(model, config.train.layout)
    return LogProbEngine(needs, tokenizer.pad_token_id, config.train.layout, config.train.chunk_size,
                         config.train.projection)


def build_scorer(config, needs: Needs, tokenizer, model, kind: str = "causal_lm") -> Scorer:
    """The scorer of ``kind`` for a run: ``causal_lm`` (third argument: the tokenizer), ``vlm`` (the
    processor, :mod:`dpokit.scoring.vlm`) or ``diffusion`` (third argument: the noise scheduler loaded
    with the denoiser, see :mod:`dpokit.scoring.diffusion`)."""
    factory = SCORERS.get(kind)
    if factory is None:
        raise ValueError(f"scorer {kind!r} is not one of {', '.join(sorted(SCORERS))}")
    return factory(config, needs, tokenizer, model)


from . import diffusion  # noqa: E402,F401  registers the "diffusion" scorer
from . import steps  # noqa: E402,F401  registers the "steps" scorer
from . import vlm  # noqa: E402,F401  registers the "vlm" scorer
