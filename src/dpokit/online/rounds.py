"""What one online round produces and reads back: append-only JSONL files, the prompt pool, a
prompt's judged samples (:class:`Group`) and the pairs built from them (:func:`select_pairs`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

SOURCES = ("policy", "reference", "teacher")  # order of a prompt's responses in scores and lists


# ------------------------------------------------------------------------------------------------
# Small file helpers: append-only JSONL that survives a crash mid-write
# ------------------------------------------------------------------------------------------------
def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    if not rows:
        return
    text = "".join(json.dumps(row) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str) -> List[dict]:
    """Rows of a JSONL file; a torn last line (a crash mid-write) is dropped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def load_prompts(source: Any) -> List[Any]:
    """Distinct prompts of a file or dataset, in order: the ``prompt`` column, or the prompt of
    preference pairs (implicit prompts are split off as for training)."""
    from ..data.formats import DataError, iter_records, parse_pair

    prompts, seen = [], set()
    for location, record in iter_records(source):
        if record.get("prompt") not in (None, ""):
            prompt = record["prompt"]
        elif "chosen" in record and "rejected" in record:
            prompt = parse_pair(location, record).prompt
        else:
            raise DataError(location, "prompt", "is missing", "online prompts need a 'prompt' column (or pairs)")
        if _key(prompt) not in seen:
            seen.add(_key(prompt))
            prompts.append(prompt)
    if not prompts:
        raise DataError(str(source), None, "contains no prompts")
    return prompts


# ------------------------------------------------------------------------------------------------
# Judged samples of one prompt
# ------------------------------------------------------------------------------------------------
@dataclass
class Group:
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
    from ..data.build import pairs_from_list
    from ..data.formats import RankedList

    usable = [i for i, text in enumerate(responses) if not _empty(text)]  # the data layer refuses empty completions
    if len(usable) < 2:
        return []
    pairs = pairs_from_list(RankedList(None, [responses[i] for i in usable], [float(scores[i]) for i in usable]),
                            mode, min_margin)
    first = {}
    for i in usable:
        first.setdefault(_key(responses[i]), i)
    return [(first[_key(p.chosen)], first[_key(p.rejected)]) for p in pairs]


def _empty(text: Any) -> bool:
    return not text.strip() if isinstance(text, str) else not text
