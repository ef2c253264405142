"""Ranked image groups for a pairwise loss: the pairs ``data.pair_builder`` builds from each group.

A ranked group (``caption``, ``images`` K >= 2, ``scores``; :mod:`dpokit.data.images`) feeds the
listwise losses as it is. A loss on pairs (``dpo``, ``ipo``, ``smpo``, ...) gets pairs built with the
same rules as for text lists (:mod:`dpokit.data.build`): ``best_vs_worst`` (one pair per group),
``best_vs_each``, ``all_pairs`` or ``margin`` (every pair with a score gap >= ``data.min_margin``);
only strictly ordered pairs with a gap >= ``min_margin``, never two identical images, ties in
list order. A group that yields no pair is counted in the load report, not dropped silently.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Sequence, Tuple

import torch

from .build import PAIR_BUILDERS


def pair_indices(scores: Sequence[float], images: torch.Tensor, strategy: str, min_margin: float = 0.0):
    """``[(i, j), ...]``: image ``i`` preferred over image ``j``."""
    if strategy not in PAIR_BUILDERS:
        raise ValueError(f"unknown pair builder {strategy!r}; choose one of {', '.join(PAIR_BUILDERS)}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))

    def usable(i: int, j: int) -> bool:
        gap = scores[i] - scores[j]
        return gap > 0 and gap >= min_margin and not torch.equal(images[i], images[j])

    if strategy == "best_vs_worst":
        best = [i for i in order if scores[i] == scores[order[0]]]
        worst = [j for j in order if scores[j] == scores[order[-1]]]
        return [(i, j) for i in best for j in worst if usable(i, j)][:1]
    if strategy == "best_vs_each":
        return [(order[0], j) for j in order[1:] if usable(order[0], j)]
    return [(i, j) for a, i in enumerate(order) for j in order[a + 1:] if usable(i, j)]


def pairs_from_image_lists(examples: Sequence, strategy: str = "best_vs_worst",
                           min_margin: float = 0.0) -> Tuple[List, int]:
    """Pair examples (``images`` [2, C, H, W], chosen first, ``scores`` None) built from ranked groups,
    in group order, and the number of groups that gave none. The pair's ``extras`` hold the group's
    numeric extras plus ``chosen_score`` / ``rejected_score`` (what ``smpo`` reads)."""
    pairs, empty = [], 0
    for ex in examples:
        built = pair_indices(ex.scores, ex.images, strategy, min_margin)
        empty += not built
        for i, j in built:
            extras = dict(ex.extras, chosen_score=ex.scores[i], rejected_score=ex.scores[j])
            pairs.append(replace(ex, images=ex.images[[i, j]], scores=None, extras=extras,
                                 location=f"{ex.location} (image {i} over {j})"))
    return pairs, empty
