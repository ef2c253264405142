"""`dpokit demo`: a complete alignment experiment on a built-in task, no downloads.

The task is ``parity`` (binary reward, :mod:`dpokit.tasks.parity`; the default) or ``graded``
(five reward levels, :mod:`dpokit.tasks.graded`), chosen by ``DemoSettings.task``.

1. build a word-level tokenizer and a tiny Llama model in-process;
2. supervised warm-up on noisy demonstrations (right only part of the time);
3. sample responses from the warm-up model, label pairs with the verifiable reward (on-policy pairs);
4. train with the chosen loss (DPO by default) through the regular trainer, the warm-up model as
   reference (loaded from the run directory with ``from_pretrained``, like any user model);
5. evaluate before and after: task reward, implicit-reward accuracy on held-out pairs, KL to the
   reference, response length; print a table and write ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch

from ..data import tokenize_examples
from ..data.formats import PreferencePair
from ..scoring.lm.engine import LogProbEngine
from ..sampling import HFSampler, SamplingConfig
from ..eval.preference import evaluate_pairs
from ..losses import Needs, get_spec
from ..io import write_jsonl
from ..reference import ModelReference
from .experiment import TABLE_ROWS, format_table  # noqa: F401  (re-exported: the demos' table)
from .experiment import (DemoRun, LossDemoSettings, load_models, loss_hparams, run_trainer, sft_warm_up,
                         tiny_text_model, train_section)
from .graded import GradedTask, build_graded_pairs
from .numbers import build_ranked_lists
from .parity import ParityTask, build_pairs

# name -> (task class, on-policy pair builder, judge spec for the monitor and the evaluation)
TASKS = {
    "parity": (ParityTask, build_pairs, "parity"),
    "graded": (GradedTask, build_graded_pairs, "dpokit.tasks.graded:graded_reward"),
}


def task_entry(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown demo task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass
class DemoSettings(LossDemoSettings):
    n_train_prompts: int = 800
    n_eval_prompts: int = 200
    samples_per_prompt: int = 8
    warmup_steps: int = 300
    warmup_accuracy: float = 0.25
    reference_beta: float = 0.5  # beta for losses scaled by a reference log-ratio (unless given)
    dpo_epochs: int = 3
    dpo_lr: float = 1e-3
    dpo_batch_size: int = 16
    hidden_size: int = 64
    layers: int = 2
    task: str = "parity"  # a key of TASKS
    label_noise: float = 0.0  # fraction of training pairs flipped (data.label_noise), seeded by `seed`
    pair_prompts: int = 0  # preference pairs from the first N training prompts only (0: all); the warm-up keeps all
    # "pairs": the task's on-policy pair builder; "lists": each prompt's samples as one ranked list
    # (data.kind lists), which a pairwise loss turns into pairs with `pair_builder`, a listwise loss reads whole
    train_data: str = "pairs"
    pair_builder: str = "best_vs_worst"  # data.pair_builder, with train_data "lists" and a pairwise loss

    def data_kind(self, loss_data: str) -> str:
        """``pairs`` or ``lists``: what the demo writes for a loss that trains on ``loss_data``."""
        if loss_data == "unpaired":
            raise ValueError(f"the demo trains pairwise and listwise losses; {self.loss!r} trains on unpaired data")
        if self.train_data not in ("pairs", "lists"):
            raise ValueError(f"train_data: 'pairs' or 'lists', got {self.train_data!r}")
        return "lists" if loss_data == "lists" else self.train_data


@torch.no_grad()
def evaluate_policy(policy, reference_model, tokenizer, task: ParityTask, prompts, heldout_pairs, seed: int,
                    samples_per_prompt: int = 2) -> Dict[str, float]:
    """reward / kl / length from the policy's own samples; preference_accuracy on held-out pairs."""
    sampler = HFSampler(policy, tokenizer, SamplingConfig(max_new_tokens=8, seed=seed, top_k=0))
    texts, ids = sampler.sample(prompts, samples_per_prompt)
    rewards = [task.reward(p, t) for p, group in zip(prompts, texts) for t in group]
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    groups = [(p, [row + [eos] for row in group]) for p, group in zip(prompt_ids, ids)]
    engine = LogProbEngine(Needs(reference=False), tokenizer.pad_token_id)
    lp_policy = engine.token_logprobs(policy, groups).sums
    lp_reference = engine.token_logprobs(reference_model, groups).sums
    reference = ModelReference(reference_model)
    pairs = evaluate_pairs(policy, reference, heldout_pairs, tokenizer.pad_token_id)
    lengths = [len(row) for group in ids for row in group]
    return {
        "reward": sum(rewards) / len(rewards),
        "preference_accuracy": pairs["preference_accuracy"],
        "kl": float((lp_policy - lp_reference).mean()),
        "length": sum(lengths) / len(lengths),
        "reward_margin_mean": pairs["reward_margin_mean"],
        "num_samples": len(rewards),
        "num_heldout_pairs": pairs["num_pairs"],
    }


def run_demo(settings: DemoSettings, log=print) -> Dict[str, Any]:
    from transformers import AutoModelForCausalLM

    task_class, pair_builder, judge = task_entry(settings.task)
    spec = get_spec(settings.loss)
    data_kind = settings.data_kind(spec.needs.data)
    run = DemoRun.start(settings.output_dir, settings.seed, log)
    out = run.out
    task = task_class(warmup_accuracy=settings.warmup_accuracy, seed=settings.seed)
    train_numbers, eval_numbers = task.split_numbers(settings.n_train_prompts, settings.n_eval_prompts)

    log(f"[1/5] tokenizer and tiny Llama ({settings.layers} layers, hidden {settings.hidden_size})")
    tokenizer, model = tiny_text_model(task.vocabulary_corpus(), settings.hidden_size, settings.layers, 64,
                                       settings.seed)

    log(f"[2/5] supervised warm-up on demonstrations that are right {settings.warmup_accuracy:.0%} of the time")
    nll, warmup_dir = sft_warm_up(run, model, tokenizer, task.demonstrations(train_numbers), settings.warmup_steps)
    log(f"      warm-up NLL {nll:.3f}; saved to {warmup_dir}")

    log(f"[3/5] sampling {settings.samples_per_prompt} responses per prompt and labelling pairs with the reward")
    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=8, seed=settings.seed + 1, top_k=0))
    train_prompts = [task.prompt(n) for n in train_numbers]
    eval_prompts = [task.prompt(n) for n in eval_numbers]
    if settings.pair_prompts:
        if not 0 < settings.pair_prompts <= len(train_prompts):
            raise ValueError(f"pair_prompts: between 1 and n_train_prompts ({len(train_prompts)}), "
                             f"got {settings.pair_prompts}")
        train_prompts = train_prompts[:settings.pair_prompts]
    train_samples = sampler.sample(train_prompts, settings.samples_per_prompt)[0]
    if data_kind == "lists":
        train_pairs = build_ranked_lists(task.reward, train_prompts, train_samples)
    else:
        train_pairs = pair_builder(task, train_prompts, train_samples, settings.seed)
    eval_samples = sampler.sample(eval_prompts, settings.samples_per_prompt)[0]
    heldout_rows = pair_builder(task, eval_prompts, eval_samples, settings.seed + 1)
    pairs_path = run.path("lists.jsonl" if data_kind == "lists" else "pairs.jsonl")
    write_jsonl(pairs_path, train_pairs)
    heldout = write_heldout_pairs(run.path("heldout_pairs.jsonl"), heldout_rows, tokenizer)
    log(f"      {len(train_pairs)} training {'lists' if data_kind == 'lists' else 'pairs'}, {len(heldout)} held-out pairs")
    before = evaluate_policy(model, model, tokenizer, task, eval_prompts, heldout, settings.seed + 2)

    log(f"[4/5] preference training with {settings.loss!r} (reference = warm-up model)")
    # the task is small and sharp: beta 0.5 keeps the policy close to the reference (KL ~ 4 nats)
    loss_section = {"name": settings.loss, **loss_hparams(spec, settings.loss_hparams, settings.reference_beta)}
    data_section = {"train": pairs_path, "eval": run.path("heldout_pairs.jsonl"), "max_length": 64}
    if data_kind == "lists":  # the trainer's evaluation reads the same kind: the held-out samples as lists
        write_jsonl(run.path("heldout_lists.jsonl"), build_ranked_lists(task.reward, eval_prompts, eval_samples))
        data_section.update(kind="lists", pair_builder=settings.pair_builder, eval=run.path("heldout_lists.jsonl"))
    if settings.label_noise:
        data_section.update(label_noise=settings.label_noise, label_noise_seed=settings.seed)
    config = run_trainer({
        "model": {"name_or_path": warmup_dir},
        "data": data_section,
        "loss": loss_section,
        "reference": {"kind": "copy" if spec.needs.reference else "none"},
        "train": train_section(run.path("train"), settings.seed, settings.dpo_epochs, settings.dpo_batch_size,
                               settings.dpo_lr, 5, monitor={"judge": judge, "samples": 2, "max_new_tokens": 8}),
    })

    log("[5/5] evaluating before and after")
    final_dir = run.path("train", "final")
    aligned, reference_model = load_models(AutoModelForCausalLM, final_dir, warmup_dir)
    after = evaluate_policy(aligned, reference_model, tokenizer, task, eval_prompts, heldout, settings.seed + 2)
    from ..eval.suite import evaluate_into_run  # eval.json + samples.jsonl for `dpokit report`

    evaluate_into_run(aligned, reference_model, tokenizer, heldout, out, judge=judge, max_new_tokens=8,
                      seed=settings.seed + 3, beta=config.loss.get("beta", 0.1),
                      meta={"model": final_dir, "reference": warmup_dir})
    return run.finish({
        "task": settings.task,
        "loss": settings.loss,
        "loss_hparams": config.loss,
        "before": before,
        "after": after,
        "train_pairs": len(train_pairs),  # training examples: pairs, or ranked lists with train_data "lists"
        "train_data": data_kind,
        "label_noise": settings.label_noise,
    })


def write_heldout_pairs(path: str, rows, tokenizer):
    """Write the held-out pair ``rows`` to ``path`` and return them tokenized (64 tokens at most)."""
    write_jsonl(path, rows)
    heldout, _ = tokenize_examples([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows],
                                   tokenizer, max_length=64)
    return heldout
