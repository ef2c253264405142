"""A two-factor image toy for ``bide_dpo``: text pairs and condition pairs each move their own factor.

Images as in :mod:`dpokit.tasks.bimodal` (8x8, a green class bar), with the patch in one quadrant:
factor 1, the *text* factor, is the mode (A: red on the left, B: blue on the right; score
``mean R - mean B``); factor 2, the *condition* factor, is the row half (top or bottom; score: patch
mass of the top half minus the bottom half). The four combinations are equally likely. From samples of
a pretrained denoiser, groups of 8 per class give a *text pair* (best vs worst by the preferred factor-1
score among samples on the same side of factor 2) and a *condition pair* (best vs worst by factor 2 among
samples of the same mode), written as BideDPO records and read back by :mod:`dpokit.data.conditions`.
There is no ControlNet here: the check is that each pair kind moves its own factor, in both directions,
and that zeroing one kind's weight leaves its factor where it was. Results: ``docs/losses/bide.md``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from ..data.collate import EpochBatchOrder
from ..data.conditions import parse_conditioned_record
from ..data.images import collate_images, load_image_examples, to_pil
from ..losses import get_loss
from ..paths import safe_join
from ..reference import ModelReference
from ..scoring import build_scorer
from .bimodal import BimodalTask, ddim_sample, noise_scheduler, tiny_unet
from .diffusion_demo import pretrain


@dataclass
class QuadrantTask(BimodalTask):
    def sample(self, classes: torch.Tensor, generator: torch.Generator, mode_a_fraction: float = 0.5) -> torch.Tensor:
        x = super().sample(classes, generator, mode_a_fraction)
        top = torch.rand(classes.shape[0], generator=generator) < 0.5
        half = self.size // 2
        for i in range(x.shape[0]):  # keep the patch in one row half: blank the other half of R and B
            rows = slice(half, None) if top[i] else slice(None, half)
            x[i, 0, rows] = -1.0
            x[i, 2, rows] = -1.0
        return x

    @staticmethod
    def top_score(x: torch.Tensor) -> torch.Tensor:
        """Patch mass (R + B) of the top half minus the bottom half: > 0 for a top patch."""
        half = x.shape[-2] // 2
        mass = (x[:, 0] + 1) + (x[:, 2] + 1)
        return mass[:, :half].flatten(1).mean(1) - mass[:, half:].flatten(1).mean(1)


def write_bide_records(images: torch.Tensor, classes: torch.Tensor, task: QuadrantTask, prefer_a: bool,
                       prefer_top: bool, folder: str, group: int = 8) -> Dict[str, int]:
    s1 = task.mode_score(images) * (1 if prefer_a else -1)
    s2 = task.top_score(images) * (1 if prefer_top else -1)
    os.makedirs(safe_join(folder, "images"), exist_ok=True)
    rows, counts = [], {"text": 0, "condition": 0}

    def save(i) -> str:
        name = f"images/{int(i):05d}.png"
        path = safe_join(folder, name)
        if not os.path.exists(path):
            to_pil(images[i]).save(path)
        return name

    for start in range(0, len(images), group):
        idx = torch.arange(start, min(start + group, len(images)))
        if len(set(classes[idx].tolist())) != 1:
            continue
        row: Dict[str, Any] = {"caption": f"class {int(classes[idx[0]])}"}
        for name, score, other in (("text_pair", s1, s2), ("condition_pair", s2, s1)):
            same = idx[other[idx] > 0] if int((other[idx] > 0).sum()) >= int((other[idx] <= 0).sum()) else \
                idx[other[idx] <= 0]  # hold the other factor fixed
            if len(same) < 2:
                continue
            best, worst = same[score[same].argmax()], same[score[same].argmin()]
            if float(score[best] - score[worst]) < 0.1:
                continue
            row[name] = {"chosen": save(best), "rejected": save(worst)}
            counts[name.split("_")[0]] += 1
        if "text_pair" in row or "condition_pair" in row:
            rows.append(row)
    with open(safe_join(folder, "bide.jsonl"), "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return counts


@torch.no_grad()
def factors(model, scheduler, task: QuadrantTask, per_class: int, seed: int) -> Dict[str, float]:
    classes = torch.arange(task.num_classes).repeat_interleave(per_class)
    x = ddim_sample(model, scheduler, {"class_labels": classes}, len(classes), task.size, seed)
    return {"fraction_A": float((task.mode_score(x) > 0).float().mean()),
            "fraction_top": float((task.top_score(x) > 0).float().mean()),
            "class_accuracy": float(task.class_accuracy(x, classes))}


def run_bide_toy(out: str, seed: int = 0, runs=None, pretrain_steps: int = 600, samples_per_class: int = 256,
                 epochs: int = 3, batch: int = 16, lr: float = 5e-5, beta: float = 250.0, eval_per_class: int = 128,
                 log=print) -> List[Dict[str, Any]]:
    """Pretrain once, then one ``bide_dpo`` run per entry of ``runs``: ``(prefer_a, prefer_top,
    text_weight, condition_weight)``; the same pretrained model, samples and evaluation noise for all."""
    runs = runs or [(True, True, 1.0, 1.0), (False, False, 1.0, 1.0), (True, True, 1.0, 0.0), (True, True, 0.0, 1.0)]
    torch.manual_seed(seed)
    task, scheduler = QuadrantTask(), noise_scheduler()
    base = tiny_unet(task.num_classes, task.size, seed)
    mse = pretrain(base, scheduler, task, pretrain_steps, 64, 2e-3, seed)
    before = factors(base, scheduler, task, eval_per_class, seed + 1000)
    log(f"pretrained (MSE {mse:.4f}): {before}")
    classes = torch.arange(task.num_classes).repeat_interleave(samples_per_class)
    images = ddim_sample(base, scheduler, {"class_labels": classes}, len(classes), task.size, seed + 1)
    results = []
    for prefer_a, prefer_top, wt, wc in runs:
        folder = safe_join(out, f"A{int(prefer_a)}_top{int(prefer_top)}_wt{wt}_wc{wc}")
        counts = write_bide_records(images, classes, task, prefer_a, prefer_top, folder)
        train, _ = load_image_examples(safe_join(folder, "bide.jsonl"), size=task.size, parse=parse_conditioned_record)
        loss_fn = get_loss("bide_dpo", beta=beta, text_weight=wt, condition_weight=wc)
        model = copy.deepcopy(base)
        reference = ModelReference(copy.deepcopy(base))
        scorer = build_scorer(None, loss_fn.needs, scheduler, model, kind="diffusion")
        scorer.seed = seed
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        order = EpochBatchOrder([1] * len(train), batch, seed)
        model.train()
        for epoch in range(epochs):
            for positions in order.batches(epoch):
                data = collate_images([train[i] for i in positions], [epoch] * len(positions), task.encode)
                loss_fn(scorer.loss_inputs(model, data, reference)).loss.mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        after = factors(model, scheduler, task, eval_per_class, seed + 1000)
        row = {"prefer_A": prefer_a, "prefer_top": prefer_top, "text_weight": wt, "condition_weight": wc,
               "pairs": counts, "before": before, "after": after, "seed": seed}
        log(json.dumps(row))
        results.append(row)
    with open(safe_join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    return results
