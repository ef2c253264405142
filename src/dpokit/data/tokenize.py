"""Turn parsed examples into token ids with prompt/completion boundaries.

Prompt and completions are tokenized separately and concatenated (as TRL does), so every
completion of a prompt shares exactly the same prompt ids (which the prompt-sharing layout relies
on). The prompt gets the tokenizer's special tokens (BOS), each completion gets EOS appended.
Message lists are rendered with the tokenizer's chat template; the completion is the part of the
rendered conversation after the rendered prompt (with the generation prompt).

Token ids given with an example (``prompt_ids``, ``chosen_ids``, ... : online rounds keep the ids
the sampler produced, see :mod:`dpokit.data.formats`) are used as they are: no rendering and no
re-tokenization (decoding and re-encoding a sample can give other ids with BPE tokenizers), and no
EOS appended (``append_eos`` applies to text only: a sampled completion ends with EOS exactly when
the sampler generated it, and one cut at ``max_new_tokens`` has none). Every id must be inside the
tokenizer's vocabulary. The truncation rules below apply to them as to tokenized text.

Truncation (``max_length`` counts prompt + completion tokens):

* ``max_prompt_length`` (optional) first shortens the prompt: ``keep_end`` (default) drops the
  oldest prompt tokens and keeps the end (the latest turns); ``keep_start`` keeps the beginning.
* each completion is then cut at the end so prompt + completion fits ``max_length``.
* an example whose completion would be cut away entirely (the prompt alone fills
  ``max_length``) is never trained on: it is reported and skipped, or, with
  ``on_empty_completion="error"``, stops the run naming the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from .formats import PreferencePair, RankedList, UnpairedExample, completion_ids

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class TokenizedExample:
    """One prompt with its completions (pairs: ``[chosen, rejected]``; unpaired: one; lists: K).

    Lists also carry ``scores`` (K numbers, higher is better) and ``objectives`` (further score
    columns by name, K numbers each).
    """

    index: int
    prompt_ids: List[int]
    completions: List[List[int]]
    label: Optional[bool] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""
    scores: Optional[List[float]] = None
    objectives: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(len(self.prompt_ids) + len(c) for c in self.completions)


@dataclass
class TruncationReport:
    total: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.total} examples: {self.prompt_truncated} prompts and {self.completion_truncated} "
            f"completions truncated, {len(self.dropped)} dropped because the prompt left no room "
            f"for the completion"
        )


def render(example, tokenizer) -> Tuple[str, List[str], bool]:
    """Return ``(prompt_text, completion_texts, templated)`` for a parsed example."""
    if isinstance(example, PreferencePair):
        completions = [example.chosen, example.rejected]
    elif isinstance(example, RankedList):
        completions = list(example.responses)
    else:
        completions = [example.completion]
    prompt = example.prompt
    if all(isinstance(c, str) for c in completions) and isinstance(prompt, str):
        return prompt, list(completions), False
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(example.location, "prompt", "is a message list but the tokenizer has no chat template",
                        "set tokenizer.chat_template or give text fields")
    prompt_messages = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    texts = []
    for completion in completions:
        messages = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        full = tokenizer.apply_chat_template(prompt_messages + messages, tokenize=False)
        if not full.startswith(prompt_text):
            raise DataError(example.location, "chosen", "the chat template does not render the prompt as a prefix "
                            "of the conversation, so the completion boundary is undefined")
        texts.append(full[len(prompt_text):])
    return prompt_text, texts, True


def _given_ids(example, vocab_size: int) -> Tuple[Optional[List[int]], List[Optional[List[int]]]]:
    """The example's ``(prompt ids, [completion ids or None])`` as given, each id checked against the vocabulary."""
    columns = [("prompt_ids", getattr(example, "prompt_ids", None))] + completion_ids(example)
    for name, ids in columns:
        for j, token in enumerate(ids or ()):
            if not 0 <= token < vocab_size:
                raise DataError(example.location, name, f"entry {j} is token id {token}, outside the tokenizer's "
                                f"vocabulary ({vocab_size} ids)", "the ids must come from this run's tokenizer")
    return columns[0][1], [ids for _, ids in columns[1:]]


def _truncate(ids: List[int], limit: int, keep_end: bool) -> List[int]:
    if len(ids) <= limit:
        return ids
    return ids[len(ids) - limit:] if keep_end else ids[:limit]


def tokenize_examples(
    examples: Sequence,
    tokenizer,
    max_length: int = 512,
    max_prompt_length: Optional[int] = None,
    truncation_mode: str = "keep_end",
    append_eos: bool = True,
    on_empty_completion: str = "skip",
    vocab_size: Optional[int] = None,
) -> Tuple[List[TokenizedExample], TruncationReport]:
    """Token ids of ``examples``. Ids given with an example (sampled by the policy) are used as they
    are and checked against ``vocab_size`` (default ``len(tokenizer)``; pass the model's embedding
    size when it is larger, as for models with padded vocabularies, which can sample those ids)."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if on_empty_completion not in ("skip", "error"):
        raise ValueError(f"on_empty_completion must be 'skip' or 'error', got {on_empty_completion!r}")
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set one or use append_eos: false")

    given = [_given_ids(ex, max(vocab_size or 0, len(tokenizer))) for ex in examples]
    rendered = [("", [], False) if prompt is not None and all(c is not None for c in comps)
                else render(ex, tokenizer) for ex, (prompt, comps) in zip(examples, given)]
    # templated prompts already carry the template's special tokens; plain text gets BOS
    prompt_ids_all: List[List[int]] = [list(prompt) if prompt is not None else [] for prompt, _ in given]
    for templated in (False, True):
        positions = [i for i, (_, _, t) in enumerate(rendered) if t == templated and given[i][0] is None]
        if positions:
            ids = tokenizer([rendered[i][0] for i in positions], add_special_tokens=not templated)["input_ids"]
            for i, row in zip(positions, ids):
                prompt_ids_all[i] = row
    flat_completions = [text for (_, comps, _), (_, ids) in zip(rendered, given) if comps
                        for text, row in zip(comps, ids) if row is None]
    from_text = iter(tokenizer(flat_completions, add_special_tokens=False)["input_ids"] if flat_completions else [])

    report = TruncationReport(total=len(examples))
    out: List[TokenizedExample] = []
    keep_end = truncation_mode == "keep_end"
    for i, example in enumerate(examples):
        prompt_ids = list(prompt_ids_all[i])
        completions = []
        for row in given[i][1]:
            if row is not None:  # the ids as sampled: EOS only where it was generated
                completions.append(list(row))
                continue
            ids = list(next(from_text))
            if append_eos and (not ids or ids[-1] != eos):
                ids.append(eos)
            completions.append(ids)
        if not prompt_ids:
            raise DataError(example.location, "prompt", "tokenizes to no tokens and the tokenizer adds no BOS, so "
                            "the first completion token has nothing to be predicted from",
                            "give the tokenizer a bos_token or a non-empty prompt")
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = _truncate(prompt_ids, max_prompt_length, keep_end)
            report.prompt_truncated += 1
        room = max_length - len(prompt_ids)
        if room <= 0:
            message = (f"prompt has {len(prompt_ids)} tokens, which leaves no room for the completion "
                       f"within max_length={max_length}")
            if on_empty_completion == "error":
                raise DataError(example.location, "prompt", message,
                                "raise max_length, set max_prompt_length, or use on_empty_completion: skip")
            report.dropped.append(example.location)
            continue
        if any(len(c) > room for c in completions):
            report.completion_truncated += 1
            completions = [c[:room] for c in completions]
        label = example.label if isinstance(example, UnpairedExample) else None
        tokenized = TokenizedExample(i, prompt_ids, completions, label, dict(example.extras), example.location)
        if isinstance(example, RankedList):
            tokenized.scores = list(example.scores)
            tokenized.objectives = {k: list(v) for k, v in example.objectives.items()}
        out.append(tokenized)
    if report.dropped:
        shown = ", ".join(report.dropped[:5]) + (" ..." if len(report.dropped) > 5 else "")
        logger.warning("dropped %d example(s) whose completion was truncated away entirely: %s",
                       len(report.dropped), shown)
    return out, report
