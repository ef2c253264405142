"""Ranked image groups for a pairwise loss: the pairs ``data.pair_builder`` builds from each group.

A ranked group (``caption``, ``images`` K >= 2, ``scores``; :mod:`dpokit.data.images`) feeds the
listwise losses as it is. A loss on pairs (``dpo``, ``ipo``, ``smpo``, ...) gets pairs built with the
same rules as for text lists (:mod:`dpokit.data.build`): ``best_vs_worst`` (one pair per group),
``best_vs_each``, ``all_pairs`` or ``margin`` (every pair with a score gap >= ``data.min_margin``);
only strictly ordered pairs with a gap >= ``min_margin``, never two identical images, ties in
list order, each pair of images once. A group that yields no pair is counted in the load report, not dropped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import List, Sequence, Tuple

import torch

from .build import ranked_pair_indices


def pair_indices(scores: Sequence[float], images: torch.Tensor, strategy: str, min_margin: float = 0.0):
    """``[(i, j), ...]``: image ``i`` preferred over image ``j`` (two identical images are never paired,
    and a repeated pair of images is built once)."""
    keys = [hashlib.blake2b(image.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
            for image in images]
    return ranked_pair_indices(scores, keys.__getitem__, strategy, min_margin)


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
