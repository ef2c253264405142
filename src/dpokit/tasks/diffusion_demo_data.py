"""The training data of ``dpokit demo --modality diffusion``, from the pretrained model's own samples.

Images are sampled with DDIM from fixed noise and grouped by class, ``group`` at a time; each image
gets the analytic reward ``preference_score`` (the mode score, negated with ``prefer="B"``). A group
whose scores span less than 0.1 (all in one mode: no clear preference) is skipped, for pairs and
lists alike. What is written depends on the data the loss trains on (``Needs.data``):

* ``pairs``: the best and the worst image of each group, ``chosen`` / ``rejected`` in ``pairs.jsonl``,
  with their rewards as ``chosen_score`` / ``rejected_score`` (what ``smpo`` reads; other pairwise
  losses ignore them);
* ``lists``: the whole group, best first (the winner at position 0, as ``phygdpo`` wants), with its
  rewards as ``scores`` in ``lists.jsonl`` (``diffusion_rankdpo``, ``phygdpo``, the listwise losses).

``DEMO_X_T`` names the methods whose ``x_t`` is not forward noising: ``inpo`` trains on DDIM-inverted
``x_t`` (:mod:`dpokit.scoring.diffusion.inversion`, inverted with the current policy, eta 0.1 as the
official InPO code), with ``inversion_steps`` inverse steps (the demo's default 5, the code's 10).
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, Tuple

import torch

from ..data.images import to_pil
from ..paths import safe_join
from ..scoring.diffusion.inversion import Inversion
from .bimodal import BimodalTask, ddim_sample

MIN_SPREAD = 0.1  # a group whose rewards span less holds one mode only
FILES = {"pairs": "pairs.jsonl", "lists": "lists.jsonl"}
DEMO_X_T: Dict[str, Tuple[str, float]] = {"inpo": ("ddim_inversion", 0.1)}  # loss -> (x_t mode, eta)


def preference_score(task: BimodalTask, x: torch.Tensor, prefer: str) -> torch.Tensor:
    score = task.mode_score(x)
    return score if prefer == "A" else -score


def scored_groups(model, scheduler, task: BimodalTask, settings, seed: int) -> Iterator[Tuple[int, torch.Tensor,
                                                                                             torch.Tensor]]:
    """``(class, images [group, C, H, W], rewards [group])`` of each group with a clear preference."""
    n = settings.samples_per_class
    classes = torch.arange(task.num_classes).repeat_interleave(n)
    images = ddim_sample(model, scheduler, {"class_labels": classes}, len(classes), task.size, seed,
                         settings.sample_steps)
    scores = preference_score(task, images, settings.prefer)
    for c in range(task.num_classes):
        for g in range(n // settings.group):
            idx = torch.arange(c * n + g * settings.group, c * n + (g + 1) * settings.group)
            if float(scores[idx].max() - scores[idx].min()) < MIN_SPREAD:
                continue
            yield c, images[idx], scores[idx]


def build_record_files(model, scheduler, task: BimodalTask, settings, folder: str, seed: int,
                       kind: str = "pairs") -> int:
    """Write PNGs and ``pairs.jsonl`` (best vs worst of each group) or ``lists.jsonl`` (each group,
    best first); returns the number of records."""
    if kind not in FILES:
        raise ValueError(f"the diffusion demo writes pairs or lists, not {kind!r}")
    os.makedirs(safe_join(folder, "images"), exist_ok=True)
    rows = []
    for c, images, scores in scored_groups(model, scheduler, task, settings, seed):
        order = torch.argsort(scores, descending=True, stable=True)
        if kind == "pairs":
            order = order[[0, -1]]
        names = []
        for rank, i in enumerate(order.tolist()):
            name = f"images/{len(rows):05d}_{rank}.png"
            to_pil(images[i]).save(safe_join(folder, name))
            names.append(name)
        ranked = [float(scores[i]) for i in order]
        if kind == "pairs":
            rows.append({"caption": f"class {c}", "chosen": names[0], "rejected": names[1],
                         "chosen_score": ranked[0], "rejected_score": ranked[1]})
        else:
            rows.append({"caption": f"class {c}", "images": names, "scores": ranked})
    with open(safe_join(folder, FILES[kind]), "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def build_pair_files(model, scheduler, task: BimodalTask, settings, folder: str, seed: int) -> int:
    """Sample, pair best-vs-worst per group of the same class, write PNGs and ``pairs.jsonl``."""
    return build_record_files(model, scheduler, task, settings, folder, seed, "pairs")


def demo_inversion(loss: str, scheduler, settings):
    """The :class:`Inversion` the method ``loss`` trains with in the demo, or None (forward noising)."""
    if loss not in DEMO_X_T:
        return None
    mode, eta = DEMO_X_T[loss]
    return Inversion(scheduler, mode, steps=settings.inversion_steps, eta=eta, model="policy", seed=settings.seed)
