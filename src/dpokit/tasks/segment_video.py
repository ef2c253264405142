"""A video toy with a per-segment verifiable reward: does DenseDPO move each segment its own way?

Clips of ``frames`` 8x8 RGB frames; the first half of the frames and the second half are each, and
independently, in one of two equally likely *modes*: A, a red patch on the left half of the frame, or
B, a blue patch on the right half, of random intensity (the bimodal image task's modes, per segment).
The reward of a frame is ``mean R - mean B`` (positive exactly in mode A).

A target asks for one mode per segment, e.g. ``("A", "B")``: A in the first half, B in the second.
Pairs of clips sampled from the pretrained model are labelled per segment (the clip closer to the
target in that segment wins it) and only pairs whose two segment labels **disagree** are kept: the
clip-level comparison of such a pair says nothing consistent about either segment. Then

* ``dense_segment_dpo`` trains on the segment labels (the scorer's per-segment surrogates);
* ``dpo`` trains on a clip-level label (the clip with the larger summed target score wins),

both through :class:`dpokit.scoring.diffusion.DiffusionScorer` on a tiny ``WanTransformer3DModel``
with flow matching, the pretrained model as the frozen reference. The metric is the fraction of
samples (fixed noise) whose segment k is in the target's mode, per segment; the two-direction check
runs the target and its mirror image with the same seeds. ``run_segment_experiment`` returns the table.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data import EpochBatchOrder
from ..data.video import VideoExample, collate_videos
from ..diffusion_sampling import sample
from ..losses import get_loss
from ..reference import ModelReference
from ..scoring.diffusion import DiffusionScorer, model_timesteps, noised_and_target, per_sample_error, predict
from .experiment import pretrain_denoiser

TEXT_DIM = 16


@dataclass
class SegmentVideoTask:
    frames: int = 4
    size: int = 8
    pixel_noise: float = 0.05

    @property
    def halves(self) -> List[Tuple[int, int]]:
        half = self.frames // 2
        return [(0, half), (half, self.frames)]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Clips [n, 3, F, H, W] in [-1, 1], each half in mode A or B with probability 1/2."""
        s, half = self.size, self.size // 2
        x = torch.full((n, 3, self.frames, s, s), -1.0)
        for start, end in self.halves:
            mode_a = torch.rand(n, generator=generator) < 0.5
            level = -1.0 + 2.0 * (0.6 + 0.4 * torch.rand(n, generator=generator))
            for i in range(n):
                if mode_a[i]:
                    x[i, 0, start:end, :, :half] = level[i]
                else:
                    x[i, 2, start:end, :, half:] = level[i]
        return (x + self.pixel_noise * torch.randn(x.shape, generator=generator)).clamp(-1, 1)

    def segment_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``mean R - mean B`` per segment [n, 2] (> 0: mode A)."""
        return torch.stack([x[:, 0, a:b].flatten(1).mean(1) - x[:, 2, a:b].flatten(1).mean(1)
                            for a, b in self.halves], dim=1)


def tiny_wan(seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3,
                                 out_channels=3, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2,
                                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def condition(n: int) -> Dict[str, torch.Tensor]:
    return {"encoder_hidden_states": torch.zeros(n, 1, TEXT_DIM)}


def encode(captions: Sequence[str]) -> Dict[str, torch.Tensor]:
    return condition(len(captions))


def pretrain(model, scheduler, task: SegmentVideoTask, steps: int, batch: int, lr: float, seed: int) -> float:
    def step_loss(generator):
        x0 = task.sample(batch, generator)
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        x_t, target = noised_and_target(scheduler, x0, eps, t, "flow")
        return per_sample_error(predict(model, x_t, model_timesteps(scheduler, t, "flow"), condition(batch)),
                                target).mean()

    return pretrain_denoiser(model, steps, lr, seed, step_loss)


def draw(model, scheduler, task: SegmentVideoTask, n: int, seed: int, steps: int) -> torch.Tensor:
    noise = torch.randn((n, 3, task.frames, task.size, task.size), generator=torch.Generator().manual_seed(seed))
    return torch.cat([sample(model, scheduler, condition(len(chunk)), chunk, steps) for chunk in noise.split(256)])


def disagreeing_pairs(task: SegmentVideoTask, clips: torch.Tensor, target: Sequence[str],
                      min_gap: float = 0.1) -> Tuple[List[VideoExample], List[VideoExample]]:
    """Consecutive clips as (a, b); per segment the clip closer to ``target`` wins; keep the pairs whose
    two segment labels disagree. Returns (segment-labelled examples, clip-level examples)."""
    sign = torch.tensor([1.0 if m == "A" else -1.0 for m in target])
    scores = task.segment_scores(clips) * sign  # higher: closer to the target
    dense, clip = [], []
    for i in range(0, clips.shape[0] - 1, 2):
        gap = scores[i] - scores[i + 1]
        labels = [int(torch.sign(g)) if abs(float(g)) > min_gap else 0 for g in gap]
        if sorted(labels) != [-1, 1]:
            continue
        pair = torch.stack([clips[i], clips[i + 1]])
        dense.append(VideoExample("clip", pair, index=len(dense), segments=task.halves, segment_labels=labels))
        order = [0, 1] if float(scores[i].sum()) >= float(scores[i + 1].sum()) else [1, 0]
        clip.append(VideoExample("clip", pair[order], index=len(clip)))
    return dense, clip


def preference_train(model, scheduler, examples, loss_name: str, beta: float, epochs: int, batch: int, lr: float,
                     seed: int):
    loss_fn = get_loss(loss_name, beta=beta)
    reference = ModelReference(copy.deepcopy(model))
    scorer = DiffusionScorer(loss_fn.needs, scheduler, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = EpochBatchOrder([1] * len(examples), batch, seed)
    model.train()
    for epoch in range(epochs):
        for positions in order.batches(epoch):
            b = collate_videos([examples[i] for i in positions], [epoch] * len(positions), encode)
            loss = loss_fn(scorer.loss_inputs(model, b, reference)).loss.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


def in_target(task: SegmentVideoTask, clips: torch.Tensor, target: Sequence[str]) -> List[float]:
    """Fraction of clips whose segment k is in ``target[k]``'s mode, per segment."""
    mode_a = task.segment_scores(clips) > 0
    return [float((mode_a[:, k] if m == "A" else ~mode_a[:, k]).float().mean()) for k, m in enumerate(target)]


def run_segment_experiment(seed: int = 0, pretrain_steps: int = 400, pretrain_batch: int = 32, pairs_from: int = 768,
                           sample_steps: int = 10, eval_n: int = 256, beta: float = 250.0, lr: float = 1e-3,
                           epochs: int = 10, batch: int = 16, pretrained_dir: Optional[str] = None,
                           log=print) -> List[Dict[str, object]]:
    """The table: per target (A, B) and (B, A), per loss, the fraction in the target's mode per segment
    before and after. ``pretrained_dir``: where the pretrained denoiser is saved, and loaded from when
    it is already there (same seed and settings: the caller's business). The defaults are the settings
    of the table in docs/diffusion.md."""
    from diffusers import WanTransformer3DModel

    task, scheduler = SegmentVideoTask(), flow_scheduler()
    if pretrained_dir and os.path.isfile(os.path.join(pretrained_dir, "config.json")):
        base, mse = WanTransformer3DModel.from_pretrained(pretrained_dir, use_safetensors=True), float("nan")
    else:
        base = tiny_wan(seed)
        mse = pretrain(base, scheduler, task, pretrain_steps, pretrain_batch, 2e-3, seed)
        if pretrained_dir:
            base.save_pretrained(pretrained_dir, safe_serialization=True)
    before = draw(base, scheduler, task, eval_n, seed + 1000, sample_steps)
    log(f"pretrained: flow MSE {mse:.4f}; first half in A {in_target(task, before, 'AA')[0]:.3f}, "
        f"second half in A {in_target(task, before, 'AA')[1]:.3f}")
    candidates = draw(base, scheduler, task, pairs_from, seed + 1, sample_steps)
    rows = []
    for target in (("A", "B"), ("B", "A")):
        dense, clip = disagreeing_pairs(task, candidates, target)
        for loss_name, examples in (("dense_segment_dpo", dense), ("dpo", clip)):
            model = preference_train(copy.deepcopy(base), scheduler, examples, loss_name, beta, epochs, batch, lr, seed)
            after = draw(model, scheduler, task, eval_n, seed + 1000, sample_steps)
            row = {"seed": seed, "target": "".join(target), "loss": loss_name, "pairs": len(examples),
                   "before": in_target(task, before, target), "after": in_target(task, after, target)}
            log(row)
            rows.append(row)
    return rows
