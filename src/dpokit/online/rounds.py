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
PAIR_ROW_KEYS = ("prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids")  # a training pair


# ------------------------------------------------------------------------------------------------
# Judged samples of one prompt
# ------------------------------------------------------------------------------------------------
@dataclass
class JudgedPrompt:
    """One prompt of a round with its responses by source, and (after judging) scores over
    :meth:`flat` order and the pairwise win matrix ``win[i][j] = P(y_i > y_j)``.

    ``completion_ids`` / ``prompt_ids`` (by source) are the token ids the sampler produced and was
    given; training rows carry them (:meth:`pair_row`) so the update scores exactly the sampled
    tokens. A response without ids (a teacher's answer, a samples file of an older version) is
    trained on its tokenized text."""

    index: int
    prompt: Any
    responses: Dict[str, List[str]] = field(default_factory=dict)
    num_tokens: Dict[str, List[int]] = field(default_factory=dict)
    scores: Optional[List[float]] = None
    win: Optional[List[List[float]]] = None
    completion_ids: Dict[str, List[Optional[List[int]]]] = field(default_factory=dict)
    prompt_ids: Dict[str, List[int]] = field(default_factory=dict)

    def add_samples(self, source: str, row: Dict[str, Any]) -> None:
        """One ``samples.jsonl`` row: the responses of ``source``, their token counts and ids."""
        k = len(row["responses"])
        self.responses[source] = row["responses"]
        self.num_tokens[source] = row.get("num_tokens", [0] * k)
        ids = row.get("completion_ids")
        self.completion_ids[source] = list(ids) if ids is not None and len(ids) == k else [None] * k
        if ids is not None and row.get("prompt_ids") is not None:
            self.prompt_ids[source] = row["prompt_ids"]

    def flat(self) -> List[Tuple[str, str]]:
        return [(source, text) for source in SOURCES for text in self.responses.get(source, [])]

    def flat_ids(self) -> List[Optional[List[int]]]:
        """The completion ids in :meth:`flat` order (None where a response has none)."""
        out: List[Optional[List[int]]] = []
        for source in SOURCES:
            texts = self.responses.get(source, [])
            out.extend(self.completion_ids.get(source) or [None] * len(texts))
        return out

    def positions(self, source: str) -> List[int]:
        return [i for i, (s, _) in enumerate(self.flat()) if s == source]

    def id_columns(self, positions: Sequence[int], names: Sequence[str]) -> Dict[str, Any]:
        """``prompt_ids`` and one column of completion ids per position (:mod:`dpokit.data.formats`), or
        nothing when no response has ids (or the sources were given different prompt ids)."""
        flat, ids = self.flat(), self.flat_ids()
        prompts = {tuple(self.prompt_ids[flat[i][0]]) for i in positions
                   if ids[i] is not None and flat[i][0] in self.prompt_ids}
        if len(prompts) != 1:
            return {}
        return {"prompt_ids": list(prompts.pop()), **{name: ids[i] for name, i in zip(names, positions)
                                                       if ids[i] is not None}}

    def list_ids(self, positions: Sequence[int]) -> Dict[str, Any]:
        """``prompt_ids`` and ``response_ids`` (one entry per position, None where a response has none)."""
        names = [str(k) for k in range(len(positions))]
        ids = self.id_columns(positions, names)
        return {"prompt_ids": ids["prompt_ids"], "response_ids": [ids.get(n) for n in names]} if ids else {}

    def pair_row(self, i: int, j: int, **extra) -> Dict[str, Any]:
        """A training pair: response ``i`` (flat order) chosen over ``j``, with their sampled ids."""
        flat = self.flat()
        return {"prompt": self.prompt, "chosen": flat[i][1], "rejected": flat[j][1], **extra,
                **self.id_columns((i, j), ("chosen_ids", "rejected_ids"))}


def pair_info(group: JudgedPrompt, r: int, i: int, j: int, scores: Sequence[float], **extra) -> dict:
    """A ``pairs.jsonl`` record: the pair with its provenance (round, sources, scores) and its ids."""
    flat = group.flat()
    return {"round": r, "prompt_index": group.index, "prompt": group.prompt, "chosen": flat[i][1],
            "rejected": flat[j][1], "chosen_source": flat[i][0], "rejected_source": flat[j][0],
            "chosen_score": scores[i], "rejected_score": scores[j], **extra,
            **group.id_columns((i, j), ("chosen_ids", "rejected_ids"))}


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
