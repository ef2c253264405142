"""Group tokenized examples into batches, and order them into batches reproducibly.

A :class:`Batch` keeps token ids as Python lists grouped by prompt; the batch layout of the log-prob
engine decides how they become tensors (padded, packed, prompt-shared), so the data side knows no
layout. Numeric extras from the data are stacked into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..errors import DataError
from .tokenize import TokenizedExample


@dataclass
class Batch:
    kind: str  # pairs | unpaired | lists
    groups: List[tuple]  # (prompt_ids, [completion_ids, ...]) per example
    index: torch.Tensor  # [B] dataset positions (keys of the reference cache)
    labels: Optional[torch.Tensor] = None  # [B] bool for unpaired data
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    scores: Optional[torch.Tensor] = None  # [B, K_max] for lists (padded with 0 where list_mask is False)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def num_tokens(self) -> int:
        return sum(len(p) + len(c) for p, comps in self.groups for c in comps)


def collate(examples: Sequence[TokenizedExample], kind: str = "pairs") -> Batch:
    groups = [(ex.prompt_ids, ex.completions) for ex in examples]
    index = torch.tensor([ex.index for ex in examples], dtype=torch.long)
    labels = None
    if kind == "unpaired":
        labels = torch.tensor([bool(ex.label) for ex in examples], dtype=torch.bool)
    extras: Dict[str, torch.Tensor] = {}
    keys = set().union(*(ex.extras.keys() for ex in examples)) if examples else set()
    for key in sorted(keys):
        missing = [ex.location for ex in examples if key not in ex.extras]
        if missing:
            raise DataError(missing[0], key, "is missing here but present in other records of the batch",
                            "give every record the field or none")
        try:
            extras[key] = torch.tensor([ex.extras[key] for ex in examples], dtype=torch.float32)
        except (ValueError, TypeError):
            raise DataError(examples[0].location, key, "has lists of different lengths across records") from None
    scores = None
    if kind == "lists":
        scores, objectives = _list_scores(examples)
        extras.update(objectives)
    return Batch(kind, groups, index, labels, extras, scores)


def _padded(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return out


def _list_scores(examples: Sequence[TokenizedExample]):
    """``scores`` [B, K_max] and ``scores_<name>`` [B, K_max] per objective, 0 where no response."""
    width = max(len(ex.completions) for ex in examples)
    for ex in examples:
        if ex.scores is None or len(ex.scores) != len(ex.completions):
            raise DataError(ex.location, "scores", "a list batch needs one score per response")
    names = list(examples[0].objectives)
    for ex in examples[1:]:
        if list(ex.objectives) != names:
            raise DataError(ex.location, "scores", f"has objectives {list(ex.objectives)} but {examples[0].location} "
                            f"has {names}", "give every list the same score columns")
    objectives = {f"scores_{name}": _padded([ex.objectives[name] for ex in examples], width) for name in names}
    return _padded([ex.scores for ex in examples], width), objectives


class EpochBatchOrder:
    """Batches of example positions for one epoch: shuffled with ``seed + epoch``, optionally
    grouped by length (batches of similar-length examples, in shuffled batch order) to cut padding.

    The order depends only on (seed, epoch), so a resumed run rebuilds it and skips what was done.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = False,
                 drop_last: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.drop_last = drop_last

    def batches(self, epoch: int) -> List[List[int]]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.group_by_length:
            window = self.batch_size * 50  # sort within windows, keep some randomness across them
            order = [
                i for start in range(0, len(order), window)
                for i in sorted(order[start:start + window], key=lambda j: self.lengths[j], reverse=True)
            ]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.group_by_length:
            perm = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)
