"""The step scorer: LM log-probs summed per reasoning step, for policy and reference.

A step pair is a prompt-shared pair whose prompt is the question followed by the prefix steps
(:func:`dpokit.data.step_pairs.step_pair_as_pair`), so the LM scorer (:class:`~dpokit.scoring.lm.engine.LogProbEngine`,
any layout, ``prompt_shared`` included) already gives every log-prob a step-level loss needs. The
one thing it does not give is *where each step ends* inside a completion that holds several steps
(a tree-search child with its continuation, a whole trajectory). :class:`StepScorer` adds that and
nothing else:

* it wraps any LM scorer (the ``scorer_wrapper`` seam of the trainer, or ``build_scorer(...,
  kind="steps")``) and calls it unchanged;
* from the completion token ids of the batch it writes ``token_stats["chosen/step_index"]`` and
  ``token_stats["rejected/step_index"]`` ([B, T], aligned with the per-token log-probs): the index of
  the step each token belongs to, counting separator tokens before it (a separator belongs to the
  step it ends);
* :func:`segment_sums` turns per-token log-probs (policy or reference) and those indices into
  per-step sums ``[rows, steps]``; :meth:`StepScorer.step_logps` does it for arbitrary groups
  (search, values).

Why a wrapper writing a token statistic, and not a new ``Needs`` field or a new engine: the segment
index is a per-token tensor like the statistics ``token_stats`` already carries, so ``LossInputs``,
``Needs``, the engine, the layouts, the reference objects and the trainer stay as they are; a loss
that reads ``step_index`` and finds none (the plain LM scorer) treats the whole completion as one
step, which is exactly right for single-step pairs. The scorer is registered as kind ``"steps"``:
``train.scorer: steps`` (with ``train.step_separator``) selects it from a config, and its
``prepare_examples`` turns step-pair records (``data.kind: pairs``) into token-id pairs before tokenization.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..losses import LossInputs
from . import register_scorer
from .lm.engine import LogProbEngine
from .lm.layouts import check_layout
from .lm.projection import RowGroup

DEFAULT_SEPARATOR = "\n"


def step_index(completion: Sequence[int], separators: Iterable[int]) -> List[int]:
    """Step index of every token of ``completion``: the number of separator tokens before it."""
    separators = set(separators)
    out, current = [], 0
    for token in completion:
        out.append(current)
        if token in separators:
            current += 1
    return out


def step_index_tensor(completions: Sequence[Sequence[int]], separators: Iterable[int], width: int,
                      device=None) -> torch.Tensor:
    """``[rows, width]`` long tensor of step indices, left-aligned like the engine's token log-probs (0 past the end)."""
    separators = list(separators)
    out = torch.zeros(len(completions), width, dtype=torch.long)
    for r, completion in enumerate(completions):
        index = step_index(completion, separators)[:width]
        if index:
            out[r, :len(index)] = torch.tensor(index, dtype=torch.long)
    return out.to(device) if device is not None else out


def segment_sums(token_logps: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                 num_steps: int = 0) -> torch.Tensor:
    """Per-step sums ``[rows, S]`` of ``token_logps`` [rows, T] over the tokens of each step
    (``index`` [rows, T] step of each token, ``mask`` [rows, T] real tokens); S = ``num_steps`` or the
    most steps of any row. Differentiable in ``token_logps``."""
    steps = max(int(num_steps), int(index.max().item()) + 1 if index.numel() else 1)
    values = token_logps * mask.to(token_logps.dtype)
    out = token_logps.new_zeros(token_logps.shape[0], steps)
    return out.scatter_add(1, index.clamp_min(0), values)


class StepScorer:
    """Any LM scorer plus per-token step indices (``token_stats[which + "/step_index"]``)."""

    def __init__(self, inner, separator_ids: Iterable[int], tokenizer=None, separator: Optional[str] = None):
        self.inner = inner
        self.separator_ids = sorted(set(int(i) for i in separator_ids))
        if not self.separator_ids:
            raise ValueError("the step scorer needs at least one separator token id")
        self.tokenizer, self.separator = tokenizer, separator

    def prepare_examples(self, examples: Sequence) -> list:
        """Step pairs (:class:`~dpokit.data.steps.StepPair`, as ``data.kind: pairs`` reads step-pair
        records) become token-id preference pairs (:func:`~dpokit.data.step_pairs.step_pair_as_pair`, steps
        joined by the separator); other examples pass unchanged."""
        from ..data.step_pairs import step_pair_as_pair
        from ..data.steps import StepPair

        if any(isinstance(ex, StepPair) for ex in examples) and (self.tokenizer is None or not self.separator):
            raise ValueError("StepScorer.prepare_examples needs the tokenizer and the separator text")
        return [step_pair_as_pair(ex, self.tokenizer, self.separator) if isinstance(ex, StepPair) else ex
                for ex in examples]

    @property
    def needs(self):
        return self.inner.needs

    def __getattr__(self, name):  # token_logprobs, hidden, layout ...: the wrapped scorer's (references call them)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def external_parameters(self, model) -> list:
        return self.inner.external_parameters(model)

    def loss_inputs(self, policy, batch, reference=None) -> LossInputs:
        inputs = self.inner.loss_inputs(policy, batch, reference)
        if batch.kind != "pairs" or inputs.chosen_token_mask is None:
            return inputs
        width = inputs.chosen_token_mask.shape[1]
        device = inputs.chosen_token_mask.device
        for k, which in enumerate(("chosen", "rejected")):
            completions = [group[1][k] for group in batch.groups]
            inputs.token_stats[f"{which}/step_index"] = step_index_tensor(completions, self.separator_ids, width, device)
        return inputs

    def step_logps(self, model, groups: Sequence[RowGroup], num_steps: int = 0) -> torch.Tensor:
        """Per-step summed log-probs ``[rows, S]`` of every completion of ``groups`` under ``model``."""
        engine = self.inner if isinstance(self.inner, LogProbEngine) else getattr(self.inner, "engine", self.inner)
        lp = engine.token_logprobs(model, groups)
        completions = [c for _, comps in groups for c in comps]
        index = step_index_tensor(completions, self.separator_ids, lp.mask.shape[1], lp.mask.device)
        return segment_sums(lp.token_logps, index, lp.mask, num_steps)


def separator_ids(tokenizer, separator: str = DEFAULT_SEPARATOR) -> List[int]:
    """Token ids that end a step: the separator as one vocabulary entry, else every token whose
    text contains it (BPE tokenizers merge newlines into several tokens)."""
    vocab = tokenizer.get_vocab()
    if separator in vocab:
        return [vocab[separator]]
    found = [i for token, i in vocab.items() if separator in tokenizer.convert_tokens_to_string([token])]
    if not found:
        raise ValueError(f"no token of the tokenizer contains the step separator {separator!r}")
    return sorted(found)


def _check_steps(config, needs) -> None:
    """``train.scorer: steps`` serves pairwise losses (step pairs are pairs) on ``data.kind: pairs``."""
    if needs.data != "pairs" or config.data.kind != "pairs":
        raise ValueError(f"'steps' scores step pairs: it needs a pairwise loss and data.kind: pairs (the loss "
                         f"trains on {needs.data}, data.kind is {config.data.kind!r})")


@register_scorer("steps", check=_check_steps)
def _step_scorer(config, needs, tokenizer, model) -> StepScorer:
    check_layout(model, config.train.layout)
    separator = getattr(config.train, "step_separator", None) or DEFAULT_SEPARATOR
    inner = LogProbEngine(needs, tokenizer.pad_token_id, config.train.layout, config.train.chunk_size,
                          config.train.projection)
    try:
        ids = separator_ids(tokenizer, separator)
    except ValueError as err:
        raise ConfigError(f"train.step_separator: {err}") from None
    return StepScorer(inner, ids, tokenizer, separator)
