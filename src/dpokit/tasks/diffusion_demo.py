"""`dpokit demo --modality diffusion`: Diffusion-DPO on the bimodal image task, no downloads.

1. build a tiny class-conditional ``diffusers.UNet2DModel`` and a DDPM scheduler in-process, and
   pretrain it on the task's images (both modes, equally likely);
2. sample images from it (DDIM, fixed noise), group them per class and pair the best with the worst
   by the verifiable reward (mode A preferred, or mode B with ``prefer="B"``), each image with its
   reward; write the pairs as PNG files and a ``pairs.jsonl`` in the image-pairs format
   (:mod:`dpokit.data.images`), or for a listwise loss each group ranked best first in a
   ``lists.jsonl`` (:mod:`.diffusion_demo_data`), and read them back;
3. train with the chosen loss (``dpo`` by default: Diffusion-DPO) through the diffusion
   scorer (:mod:`dpokit.scoring.diffusion`), the pretrained model as frozen reference (``inpo``:
   on DDIM-inverted ``x_t``);
4. evaluate before and after from the same initial noise: fraction of samples in the preferred
   mode, mean mode score, class accuracy (the factor that should not move), implicit-reward
   accuracy on held-out pairs; print a table and write ``summary.json``; the trained denoiser is in
   ``train/final`` (``UNet2DModel.from_pretrained``).

The preference step is a short loop over dpokit's pieces (``EpochBatchOrder``, ``collate_images``,
the scorer, the loss registry); noise per example is seeded by (seed, example, epoch).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from ..data import EpochBatchOrder
from ..data.images import collate_images, load_image_examples
from ..eval.sample_grids import FOLDER as GRIDS_FOLDER, save_sample_grids
from ..losses import get_loss, get_spec
from ..paths import safe_join
from ..reference import ModelReference
from ..scoring import build_scorer
from ..scoring.diffusion import noised_and_target, per_sample_error, predict
from .bimodal import BimodalTask, ddim_sample, noise_scheduler, tiny_unet
from .diffusion_demo_data import FILES, build_pair_files, build_record_files, demo_inversion, preference_score
from .experiment import pretrain_denoiser
from .diffusion_dro_demo import EXPERT_METHODS
from .demo import format_table


@dataclass
class DiffusionDemoSettings:
    output_dir: str = "runs/demo-diffusion"
    loss: str = "dpo"
    loss_hparams: Dict[str, Any] = field(default_factory=dict)
    prefer: str = "A"  # A | B
    seed: int = 0
    beta: float = 250.0  # dpokit beta (= 0.5 * Salesforce beta_dpo) unless given in loss_hparams
    pretrain_steps: int = 400
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    samples_per_class: int = 192
    group: int = 4
    dpo_epochs: int = 3
    dpo_batch: int = 16
    dpo_lr: float = 5e-5
    eval_per_class: int = 128
    sample_steps: int = 20
    inversion_steps: int = 5  # inverse DDIM steps of the methods that train on inverted x_t (inpo)
    # Diffusion-DRO (--loss diffusion_dro): expert images of the preferred mode, online negatives
    experts_per_class: int = 64
    dro_steps: int = 200
    dro_batch: int = 16
    dro_lr: float = 1e-4


def pretrain(model, scheduler, task: BimodalTask, steps: int, batch: int, lr: float, seed: int) -> float:
    """Plain denoising (epsilon-MSE) training on fresh task samples; returns the last 20 steps' mean loss."""
    total = scheduler.config.num_train_timesteps

    def step_loss(generator):
        classes = torch.randint(0, task.num_classes, (batch,), generator=generator)
        x0 = task.sample(classes, generator)
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, total, (batch,), generator=generator)
        x_t, target = noised_and_target(scheduler, x0, eps, t)
        return per_sample_error(predict(model, x_t, t, {"class_labels": classes}), target).mean()

    return pretrain_denoiser(model, steps, lr, seed, step_loss)


@torch.no_grad()
def evaluate(model, reference, scheduler, scorer, task: BimodalTask, heldout, settings, prefer: str) -> Dict[str, float]:
    n = settings.eval_per_class
    classes = torch.arange(task.num_classes).repeat_interleave(n)
    x = ddim_sample(model, scheduler, {"class_labels": classes}, len(classes), task.size, settings.seed + 1000,
                    settings.sample_steps)
    score = task.mode_score(x)
    in_a = (score > 0).float()
    batch = collate_images(heldout, [0] * len(heldout), task.encode)
    model.eval()
    e_pi, e_ref = scorer.errors(model, batch, reference)
    model.train()
    s = e_pi - e_ref  # diffusion score: lower = the policy likes the sample more than the reference
    return {
        "fraction_in_A": float(in_a.mean()),
        "fraction_in_preferred_mode": float(in_a.mean() if prefer == "A" else 1 - in_a.mean()),
        "reward": float(preference_score(task, x, prefer).mean()),
        "mode_score": float(score.mean()),
        "class_accuracy": float(task.class_accuracy(x, classes)),
        # held-out pairs the policy ranks right (ties, e.g. policy == reference, count one half)
        "preference_accuracy": float(((s[:, 1] - s[:, 0]).sign().mean() + 1) / 2),
        "num_samples": len(classes),
    }


def best_and_worst_gaps(inputs):
    """``e_pi - e_ref`` of the preferred and of the dispreferred sample, batch means (pairs: chosen and
    rejected; lists, written best first: the first and the last image)."""
    if inputs.list_policy_logps is not None:
        gap = -(inputs.list_policy_logps - inputs.list_reference_logps).detach()
        last = inputs.list_mask.long().sum(-1, keepdim=True) - 1
        return gap[:, 0].mean(), gap.gather(-1, last).mean()
    return (-(inputs.policy_chosen_logps - inputs.reference_chosen_logps).detach().mean(),
            -(inputs.policy_rejected_logps - inputs.reference_rejected_logps).detach().mean())


def pairwise_training(model, scorer, reference, loss_fn, task, train, settings, log):
    """The offline path: epochs of seeded batches of the image pairs (or ranked lists) through the
    diffusion scorer."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.dpo_lr, weight_decay=0.0)
    order = EpochBatchOrder([1] * len(train), settings.dpo_batch, settings.seed)
    step, history = 0, []
    model.train()
    for epoch in range(settings.dpo_epochs):
        for positions in order.batches(epoch):
            batch = collate_images([train[i] for i in positions], [epoch] * len(positions), task.encode)
            inputs = scorer.loss_inputs(model, batch, reference)
            result = loss_fn(inputs)
            result.loss.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            d_w, d_l = best_and_worst_gaps(inputs)
            history.append({"step": step, "loss": float(result.loss.detach().mean()), "mse_w_minus_ref": float(d_w),
                            "mse_l_minus_ref": float(d_l),
                            **{k: float(torch.as_tensor(v).detach()) for k, v in result.metrics.items()}})
        last = history[-1]
        log(f"      epoch {epoch + 1}: loss {last['loss']:.4f}  mse_w-ref {last['mse_w_minus_ref']:+.5f}  "
            f"mse_l-ref {last['mse_l_minus_ref']:+.5f}")
    return history, step


def run_diffusion_demo(settings: DiffusionDemoSettings, log=print) -> Dict[str, Any]:
    if settings.prefer not in ("A", "B"):
        raise ValueError(f"prefer must be 'A' or 'B', got {settings.prefer!r}")
    spec = get_spec(settings.loss)
    if spec.needs.data not in FILES:
        raise ValueError(f"`dpokit demo --modality diffusion --loss` takes a loss on pairs or ranked lists; "
                         f"{spec.name!r} trains on {spec.needs.data} data")
    kind = spec.needs.data
    hparams = dict(settings.loss_hparams)
    if spec.needs.reference and "beta" in spec.defaults and "beta" not in hparams:
        hparams["beta"] = settings.beta
    if spec.name in EXPERT_METHODS:  # the online options (buffer sizes, ...) go to the method, not the loss
        hparams = {k: v for k, v in hparams.items() if k in spec.defaults}
    loss_fn = get_loss(spec.name, **hparams)
    started, cpu_started = time.time(), time.process_time()
    out = settings.output_dir
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(settings.seed)
    task = BimodalTask()
    scheduler = noise_scheduler()

    log(f"[1/4] pretraining a tiny UNet2DModel on the bimodal task ({settings.pretrain_steps} steps)")
    model = tiny_unet(task.num_classes, task.size, settings.seed)
    mse = pretrain(model, scheduler, task, settings.pretrain_steps, settings.pretrain_batch, settings.pretrain_lr,
                   settings.seed)
    pretrained_dir = safe_join(out, "pretrained")
    model.save_pretrained(pretrained_dir, safe_serialization=True)
    scheduler.save_pretrained(pretrained_dir)
    log(f"      denoising MSE {mse:.4f}; saved to {pretrained_dir}")

    expert_method = EXPERT_METHODS.get(spec.name)  # positives only, negatives sampled online
    log(f"[2/4] sampling and pairing by the reward (preferred mode: {settings.prefer})")
    train_dir, heldout_dir = safe_join(out, "pairs"), safe_join(out, "heldout_pairs")
    n_train = 0 if expert_method else build_record_files(model, scheduler, task, settings, train_dir,
                                                         settings.seed + 1, kind)
    build_pair_files(model, scheduler, task, settings, heldout_dir, settings.seed + 2)
    train = [] if expert_method else load_image_examples(safe_join(train_dir, FILES[kind]), kind=kind,
                                                         size=task.size)[0]
    heldout, _ = load_image_examples(safe_join(heldout_dir, "pairs.jsonl"), size=task.size)
    log(f"      {n_train} training {kind}, {len(heldout)} held-out pairs (evaluation)")

    reference = ModelReference(copy.deepcopy(model))
    scorer = build_scorer(None, loss_fn.needs, scheduler, model, kind="diffusion")
    scorer.seed = settings.seed
    scorer.inversion = demo_inversion(spec.name, scheduler, settings)
    before = evaluate(model, reference, scheduler, scorer, task, heldout, settings, settings.prefer)

    shown = dict(settings.loss_hparams) if expert_method else hparams
    log(f"[3/4] preference training with {spec.name!r} {shown}")
    n_experts = 0
    if expert_method:
        history, n_experts = expert_method(model, scheduler, task, settings, dict(settings.loss_hparams), log)
        step = len(history)
    else:
        history, step = pairwise_training(model, scorer, reference, loss_fn, task, train, settings, log)
    final_dir = safe_join(out, "train", "final")
    model.save_pretrained(final_dir, safe_serialization=True)
    scheduler.save_pretrained(final_dir)
    with open(safe_join(out, "train", "metrics.jsonl"), "w") as handle:
        for row in history:
            handle.write(json.dumps(row) + "\n")

    log("[4/4] evaluating before and after (same initial noise)")
    from diffusers import UNet2DModel

    aligned = UNet2DModel.from_pretrained(final_dir, use_safetensors=True)
    after = evaluate(aligned, reference, scheduler, scorer, task, heldout, settings, settings.prefer)
    write_demo_grids(aligned, reference, scheduler, task, settings, safe_join(out, "train", GRIDS_FOLDER))
    summary = {
        "task": "bimodal-images",
        "prefer": settings.prefer,
        "loss": spec.name,
        "loss_hparams": loss_fn.hparams,
        "before": before,
        "after": after,
        "train_pairs": len(train),  # records: pairs, or ranked lists for a listwise loss
        "train_data": "experts" if expert_method else kind,
        "x_t": scorer.inversion.mode if scorer.inversion is not None else "forward",
        **({"expert_images": n_experts} if expert_method else {}),
        "steps": step,
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "run_dir": out,
    }
    with open(safe_join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    log(format_table(before, after, TABLE_ROWS, width=28))
    log(f"summary: {safe_join(out, 'summary.json')}  ({summary['seconds']} s, {summary['cpu_seconds']} s CPU)")
    return summary


def write_demo_grids(model, reference, scheduler, task: BimodalTask, settings, directory: str) -> str:
    """One sample per class of the trained model and of the reference, from the same noise (the report's grid)."""
    classes = {"class_labels": torch.arange(task.num_classes)}
    seed = settings.seed + 3000
    policy = ddim_sample(model, scheduler, classes, task.num_classes, task.size, seed, settings.sample_steps)
    with reference.active() as ref:
        before = ddim_sample(ref, scheduler, classes, task.num_classes, task.size, seed, settings.sample_steps)
    return save_sample_grids(directory, task.captions(), policy, before, {"seed": seed, "steps": settings.sample_steps})


TABLE_ROWS = (("fraction in preferred mode", "fraction_in_preferred_mode"), ("fraction in mode A", "fraction_in_A"),
              ("reward (preferred score)", "reward"), ("class accuracy", "class_accuracy"),
              ("preference accuracy", "preference_accuracy"))
