"""Prompts without responses: the prompt pools of online rounds and of generation-based evaluation."""

from __future__ import annotations

import json
import os
from typing import Any, List

from ..errors import DataError
from .formats import iter_records, parse_pair


def text_key(text: Any) -> str:
    """A hashable key of a prompt or response: the string itself, or chat messages as sorted JSON."""
    return text if isinstance(text, str) else json.dumps(text, sort_keys=True)


def is_empty(text: Any) -> bool:
    """An empty (or whitespace-only) response or an empty list of messages."""
    return not text.strip() if isinstance(text, str) else not text


def load_prompts(source: Any) -> List[Any]:
    """Distinct prompts of a source, in order of first appearance.

    A ``.txt`` file (or any file not ``.jsonl``/``.json``/``.parquet``/``.csv``) holds one prompt per
    non-empty line. Otherwise (files, ``datasets`` objects, hub ids) each record gives its ``prompt``
    (a string or chat messages) or, for preference pairs, the prompt they share (implicit prompts are
    split off as for training)."""
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and \
            not os.fspath(source).endswith((".jsonl", ".json", ".parquet", ".csv")):
        with open(source, encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
        records = [(f"{source}:{i}", {"prompt": line}) for i, line in enumerate(lines, 1)]
    else:
        records = iter_records(source)
    prompts, seen = [], set()
    for location, record in records:
        if record.get("prompt") not in (None, ""):
            prompt = record["prompt"]
        elif "chosen" in record and "rejected" in record:
            prompt = parse_pair(location, record).prompt
        else:
            raise DataError(location, "prompt", "is missing", "a prompt file needs a 'prompt' column (or pairs)")
        if text_key(prompt) not in seen:
            seen.add(text_key(prompt))
            prompts.append(prompt)
    if not prompts:
        raise DataError(str(source), None, "contains no prompts")
    return prompts
