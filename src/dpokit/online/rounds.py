"""What one online round produces and reads back (append-only JSONL files, :mod:`dpokit.io`): a
prompt's judged samples (:class:`JudgedPrompt`) and the pairs built from them (:func:`select_pairs`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..data.build import pairs_from_list
from ..data.formats import RankedList
from ..data.prompts import is_empty, text_key
from ..io import read_jsonl

SOURCES = ("policy", "reference", "teacher")  # order of a prompt's responses in scores and lists


# ------------------------------------------------------------------------------------------------
# Judged samples of one prompt
# ------------------------------------------------------------------------------------------------
@dataclass
class JudgedPrompt:
    """One prompt of a round with its responses by source, and (after judging) scores over
    :meth:`flat` order and the pairwise win matrix ``win[i][j] = P(y_i > y_j)``."""

    index: int
    prompt: Any
    responses: Dict[str, List[str]] = field(default_factory=dict)
    num_tokens: Dict[str, List[int]] = field(default_factory=dict)
    scores: Optional[List[float]] = None
    win: Optional[List[List[float]]] = None

    def flat(self) -> List[Tuple[str, str]]:
        return [(source, text) for source in SOURCES for text in self.responses.get(source, [])]

    def positions(self, source: str) -> List[int]:
        return [i for i, (s, _) in enumerate(self.flat()) if s == source]


def select_pairs(responses: Sequence[Any], scores: Sequence[float], mode: str = "best_vs_worst",
                 min_margin: float = 0.0) -> List[Tuple[int, int]]:
    """Index pairs ``(chosen, rejected)`` from scored responses, as the ranked-list pair builders
    (:func:`dpokit.data.build.pairs_from_list`) build them: tied or identical responses are never paired."""
    usable = [i for i, text in enumerate(responses) if not is_empty(text)]  # the data layer refuses empty completions
    if len(usable) < 2:
        return []
    pairs = pairs_from_list(RankedList(None, [responses[i] for i in usable], [float(scores[i]) for i in usable]),
                            mode, min_margin)
    first = {}
    for i in usable:
        first.setdefault(text_key(responses[i]), i)
    return [(first[text_key(p.chosen)], first[text_key(p.rejected)]) for p in pairs]


def last_train_metrics(path: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """What ``rounds.jsonl`` records of a round's training: its steps and last train metrics."""
    out: Dict[str, Any] = {"trained": True, "steps": result.get("step")}
    if os.path.exists(path):
        rows = [row for row in read_jsonl(path) if "loss" in row]
        if rows:
            last = rows[-1]
            for key in ("loss", "rewards/accuracies", "rewards/margins"):
                if key in last:
                    out[f"train/{key}"] = last[key]
    return out
