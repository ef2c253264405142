"""Step pairs (:mod:`dpokit.data.steps`) as the preference pairs the LM scorer reads: the prompt plus
the prefix steps as prompt, each candidate step as a completion, with token ids that keep the step
boundaries as written (kept apart from :mod:`dpokit.data.steps` so that the record parsers, which
:mod:`dpokit.data.formats` calls, import nothing of it)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

from ..errors import DataError
from .formats import PreferencePair
from .steps import StepPair, steps_text


def step_pair_as_pair(pair: StepPair, tokenizer, separator: str) -> PreferencePair:
    """The preference pair of a step pair: prompt = prompt + prefix steps; completions with token ids
    (EOS only after a final completion), so tokenization keeps the step boundaries as written."""
    prompt = pair.prompt + steps_text(pair.prefix_steps, separator, final=False)
    chosen = steps_text(pair.chosen, separator, pair.chosen_final)
    rejected = steps_text(pair.rejected, separator, pair.rejected_final)
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt)["input_ids"]
    chosen_ids, rejected_ids = tokenizer([chosen, rejected], add_special_tokens=False)["input_ids"]
    if pair.chosen_final:
        chosen_ids = chosen_ids + [eos]
    if pair.rejected_final:
        rejected_ids = rejected_ids + [eos]
    for name, ids in (("chosen_step", chosen_ids), ("rejected_step", rejected_ids)):
        if not ids:
            raise DataError(pair.location, name, "tokenizes to no tokens")
    if chosen_ids == rejected_ids:
        raise DataError(pair.location, "rejected_step", "tokenizes to the same ids as chosen_step")
    out = PreferencePair(prompt, chosen, rejected, dict(pair.extras), pair.location)
    out.prompt_ids, out.chosen_ids, out.rejected_ids = prompt_ids, chosen_ids, rejected_ids
    return out


def pair_records(pairs: Iterable[StepPair], tokenizer, separator: str) -> List[Dict[str, Any]]:
    """Pair records (text and token ids) that ``data.kind: pairs`` reads, one per step pair."""
    rows = []
    for pair in pairs:
        p = step_pair_as_pair(pair, tokenizer, separator)
        rows.append({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "prompt_ids": p.prompt_ids,
                     "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids, **p.extras})
    return rows
