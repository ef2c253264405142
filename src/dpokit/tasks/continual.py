"""Continual preference learning: a sequence of number tasks trained one after another.

The tasks share one word-level tokenizer and one tiny Llama (:mod:`dpokit.tiny`) and ask different
questions about the same kind of prompt (``number : 4 7 2 . <question>``), each with a verifiable
reward: ``parity`` (even or odd, reward 0/1, :mod:`dpokit.tasks.parity`), ``last_digit``,
``first_digit`` and ``middle_digit`` (graded reward 1/0.75/0.5/0.25/0 by circular distance,
:mod:`dpokit.tasks.graded`). The digit tasks answer in the same words, so learning one can undo another.

1. a supervised warm-up on demonstrations of *every* task, right only ``warmup_accuracy`` of the
   time (the model learns each answer format, not the answers);
2. for each task ``t`` in order: sample responses of the current model on that task's training
   prompts, label best-vs-worst pairs with that task's reward (on-policy pairs), and train with the
   regular trainer, the model after task ``t-1`` as both the starting point and the reference
   (``reference.kind: path``, re-anchored every task), optionally adding ``sft_weight * NLL(y_w)``;
3. after each task, the held-out reward on every task (a row of the reward matrix ``R[t][j]``).

Metrics over the matrix (rows: after task ``t``; columns: task ``j``; ``T`` tasks):

* final average reward: ``mean_j R[T-1][j]``;
* forgetting (Chaudhry et al. 2018): ``mean_{j<T-1} (max_{t in j..T-2} R[t][j] - R[T-1][j])``, the
  drop from the best reward task ``j`` reached after it was learned to its final reward;
* backward transfer (Lopez-Paz & Ranzato 2017): ``mean_{j<T-1} (R[T-1][j] - R[j][j])``.

Run ``python -m dpokit.tasks.continual --loss phi_dpo --hparam gamma=2`` (see ``docs/continual.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..io import write_jsonl
from ..paths import safe_join
from ..sampling import HFSampler, SamplingConfig
from .graded import GradedTask, build_graded_pairs
from .numbers import NumberTask
from .parity import ParityTask


@dataclass
class FirstDigitTask(GradedTask):
    """Name the first digit of the number (graded reward as :class:`GradedTask`)."""

    question = "first digit ?"

    def digit_of(self, number: int) -> int:
        return number // 10 ** (self.digits - 1)


@dataclass
class MiddleDigitTask(GradedTask):
    """Name the digit at position ``digits // 2`` from the right (the middle one of three)."""

    question = "middle digit ?"

    def digit_of(self, number: int) -> int:
        return (number // 10 ** (self.digits // 2)) % 10


CONTINUAL_TASKS = {"parity": ParityTask, "last_digit": GradedTask, "first_digit": FirstDigitTask,
                   "middle_digit": MiddleDigitTask}


# --------------------------------------------------------------------------- metrics


def _check_matrix(matrix: Sequence[Sequence[Optional[float]]]) -> int:
    """The number of tasks ``T`` of a reward matrix; rows ``t`` must hold tasks ``0..t`` at least."""
    tasks = len(matrix)
    if tasks == 0:
        raise ValueError("reward matrix: no rows (train at least one task)")
    for t, row in enumerate(matrix):
        if len(row) < t + 1 or any(row[j] is None for j in range(t + 1)):
            raise ValueError(f"reward matrix: row {t} (after task {t}) needs rewards on tasks 0..{t}, got {list(row)}")
    if len(matrix[-1]) != tasks:
        raise ValueError(f"reward matrix: the last row needs {tasks} rewards (one per task), got {len(matrix[-1])}")
    return tasks


def final_average_reward(matrix: Sequence[Sequence[Optional[float]]]) -> float:
    """``mean_j R[T-1][j]``: the final model's held-out reward averaged over every task."""
    tasks = _check_matrix(matrix)
    return sum(matrix[-1][:tasks]) / tasks


def forgetting_per_task(matrix: Sequence[Sequence[Optional[float]]]) -> List[float]:
    """``max_{t in j..T-2} R[t][j] - R[T-1][j]`` for each earlier task ``j < T-1`` (empty when ``T = 1``).

    Positive: the task lost reward after it was learned; it can be negative when later tasks help."""
    tasks = _check_matrix(matrix)
    return [max(matrix[t][j] for t in range(j, tasks - 1)) - matrix[-1][j] for j in range(tasks - 1)]


def forgetting(matrix: Sequence[Sequence[Optional[float]]]) -> float:
    """Mean of :func:`forgetting_per_task` over the earlier tasks (Chaudhry et al. 2018); needs ``T >= 2``."""
    per_task = forgetting_per_task(matrix)
    if not per_task:
        raise ValueError("forgetting: needs at least two tasks")
    return sum(per_task) / len(per_task)


def backward_transfer(matrix: Sequence[Sequence[Optional[float]]]) -> float:
    """``mean_{j<T-1} (R[T-1][j] - R[j][j])`` (Lopez-Paz & Ranzato 2017); needs ``T >= 2``."""
    tasks = _check_matrix(matrix)
    if tasks < 2:
        raise ValueError("backward transfer: needs at least two tasks")
    return sum(matrix[-1][j] - matrix[j][j] for j in range(tasks - 1)) / (tasks - 1)


def continual_metrics(matrix: Sequence[Sequence[Optional[float]]]) -> Dict[str, float]:
    """Final average reward, forgetting and backward transfer of a reward matrix, with per-task values
    (``reward/<j>``: final reward on task ``j``; ``forgetting/<j>``: for the earlier tasks)."""
    tasks = _check_matrix(matrix)
    out = {"final_average_reward": final_average_reward(matrix)}
    if tasks >= 2:
        out.update(forgetting=forgetting(matrix), backward_transfer=backward_transfer(matrix))
        out.update({f"forgetting/{j}": f for j, f in enumerate(forgetting_per_task(matrix))})
    out.update({f"reward/{j}": matrix[-1][j] for j in range(tasks)})
    return out


# --------------------------------------------------------------------------- the runner


@dataclass
class ContinualSettings:
    output_dir: str = "runs/continual"
    tasks: Sequence[str] = ("parity", "last_digit", "first_digit")  # keys of CONTINUAL_TASKS, in training order
    loss: str = "dpo"  # any pairwise loss with a reference (phi_dpo, dpo, ...)
    loss_hparams: Dict[str, Any] = field(default_factory=dict)
    beta: float = 0.1  # unless loss_hparams sets it
    sft_weight: float = 1.0  # adds sft_weight * NLL(y_w) (token mean per example); 0: the loss alone
    seed: int = 0
    n_train_prompts: int = 300  # per task
    n_eval_prompts: int = 100  # per task
    samples_per_prompt: int = 8
    eval_samples_per_prompt: int = 4
    warmup_steps: int = 1200  # three tasks to learn the answer format of; fewer leaves the digit tasks near chance
    warmup_accuracy: float = 0.25
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 16
    hidden_size: int = 64
    layers: int = 2

    def loss_section(self) -> Dict[str, Any]:
        name = self.loss if not self.sft_weight else f"{self.loss} + {self.sft_weight:g}*sft"
        return {"name": name, "beta": self.beta, **self.loss_hparams}

    def check(self) -> None:
        unknown = [t for t in self.tasks if t not in CONTINUAL_TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown task {unknown[0]!r}; choose from {', '.join(CONTINUAL_TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: each task at most once, got {list(self.tasks)}")
        if not self.tasks:
            raise ValueError("tasks: at least one task")


def build_tasks(settings: ContinualSettings) -> List[NumberTask]:
    settings.check()
    return [CONTINUAL_TASKS[name](warmup_accuracy=settings.warmup_accuracy, seed=settings.seed)
            for name in settings.tasks]


def warm_up(settings: ContinualSettings, directory: str, log=print) -> str:
    """The shared starting model: tokenizer over every task's words, tiny Llama, supervised warm-up on
    the demonstrations of every task (interleaved). Reused when ``directory`` already holds it."""
    from ..tiny import tiny_llama, train_tokenizer
    from ..train.sft import sft_train

    if os.path.exists(os.path.join(directory, "config.json")):
        return directory
    tasks = build_tasks(settings)
    torch.manual_seed(settings.seed)
    corpus = [text for task in tasks for text in task.vocabulary_corpus()]
    tokenizer = train_tokenizer(corpus, vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=settings.hidden_size, num_layers=settings.layers,
                       max_position_embeddings=64, seed=settings.seed, tokenizer=tokenizer)
    demos = []
    for task in tasks:
        train_numbers, _ = task.split_numbers(settings.n_train_prompts, settings.n_eval_prompts)
        demos.extend(task.demonstrations(train_numbers))
    random.Random(settings.seed).shuffle(demos)
    log(f"warm-up: {len(demos)} demonstrations over {len(tasks)} tasks, right {settings.warmup_accuracy:.0%} of the time")
    sft_train(model, tokenizer, demos, steps=settings.warmup_steps, seed=settings.seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def task_reward(model, tokenizer, task: NumberTask, prompts: Sequence[str], samples: int, seed: int) -> float:
    """Mean reward of ``samples`` sampled answers per prompt (temperature 1)."""
    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=8, seed=seed, top_k=0))
    texts = sampler.sample(list(prompts), samples)[0]
    rewards = [task.reward(p, t) for p, group in zip(prompts, texts) for t in group]
    return sum(rewards) / len(rewards)


def _evaluate_all(model, tokenizer, tasks, eval_prompts, settings) -> List[float]:
    # the seed depends on the task only, so every method and stage is scored on the same sampling stream
    return [task_reward(model, tokenizer, task, prompts, settings.eval_samples_per_prompt, settings.seed * 1000 + 500 + j)
            for j, (task, prompts) in enumerate(zip(tasks, eval_prompts))]


def run_continual(settings: ContinualSettings, log=print, warmup_dir: Optional[str] = None) -> Dict[str, Any]:
    """Train the tasks in order; ``summary.json`` holds the reward matrix (``matrix[t][j]``, after task
    ``t``, every task ``j`` including the ones not trained yet), ``before`` (the warm-up's rewards) and
    :func:`continual_metrics`. ``warmup_dir``: start from this warm-up model (see :func:`warm_up`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..config import from_dict
    from ..train import Trainer

    started = time.time()
    tasks = build_tasks(settings)
    out = settings.output_dir
    os.makedirs(out, exist_ok=True)
    warmup_dir = warmup_dir or warm_up(settings, safe_join(out, "warmup"), log=log)
    tokenizer = AutoTokenizer.from_pretrained(warmup_dir)
    splits = [task.split_numbers(settings.n_train_prompts, settings.n_eval_prompts) for task in tasks]
    eval_prompts = [[task.prompt(n) for n in ev] for task, (_, ev) in zip(tasks, splits)]
    model = AutoModelForCausalLM.from_pretrained(warmup_dir, use_safetensors=True)
    before = _evaluate_all(model, tokenizer, tasks, eval_prompts, settings)
    log(f"warm-up rewards: {' '.join(f'{r:.3f}' for r in before)}")
    matrix: List[List[float]] = []
    pair_counts: List[int] = []
    previous = warmup_dir
    for t, (name, task, (train_numbers, _)) in enumerate(zip(settings.tasks, tasks, splits)):
        stage = safe_join(out, f"task{t}_{name}")
        os.makedirs(stage, exist_ok=True)
        prompts = [task.prompt(n) for n in train_numbers]
        sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=8, seed=settings.seed * 1000 + t, top_k=0))
        pairs = build_graded_pairs(task, prompts, sampler.sample(prompts, settings.samples_per_prompt)[0],
                                   seed=settings.seed * 1000 + t)
        if not pairs:
            raise RuntimeError(f"task {t} ({name}): the current model's samples give no preference pair")
        pairs_path = safe_join(stage, "pairs.jsonl")
        write_jsonl(pairs_path, pairs)
        pair_counts.append(len(pairs))
        config = from_dict({
            "model": {"name_or_path": previous},
            "data": {"train": pairs_path, "max_length": 64},
            "loss": settings.loss_section(),
            "reference": {"kind": "path", "path": previous},  # re-anchored: the model after the previous task
            "train": {"output_dir": safe_join(stage, "train"), "seed": settings.seed * 1000 + t,
                      "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
                      "scheduler": "cosine", "warmup_ratio": 0.05, "log_every": 5, "report_to": [],
                      "progress_bar": False, "mixed_precision": "no"},
        })
        Trainer(config).fit()
        previous = safe_join(stage, "train", "final")
        model = AutoModelForCausalLM.from_pretrained(previous, use_safetensors=True)
        matrix.append(_evaluate_all(model, tokenizer, tasks, eval_prompts, settings))
        log(f"after task {t} ({name}, {len(pairs)} pairs): " + " ".join(f"{r:.3f}" for r in matrix[-1]))
    summary = {
        "settings": {**asdict(settings), "tasks": list(settings.tasks)},
        "loss": settings.loss_section(),
        "before": before,
        "matrix": matrix,
        "metrics": continual_metrics(matrix),
        "train_pairs": pair_counts,
        "final": previous,
        "seconds": round(time.time() - started, 1),
    }
    with open(safe_join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    log(format_matrix(summary))
    return summary


def format_matrix(summary: Dict[str, Any]) -> str:
    """The reward matrix as a table (rows: after each task; columns: tasks) and the three metrics."""
    names = summary["settings"]["tasks"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'after':<16}" + "".join(f"{n:>{width}}" for n in names), "-" * (16 + width * len(names))]
    lines.append(f"{'warm-up':<16}" + "".join(f"{r:>{width}.3f}" for r in summary["before"]))
    for t, row in enumerate(summary["matrix"]):
        lines.append(f"{f'{t}: {names[t]}':<16}" + "".join(f"{r:>{width}.3f}" for r in row))
    m = summary["metrics"]
    lines.append(f"final average reward {m['final_average_reward']:.3f}"
                 + (f", forgetting {m['forgetting']:.3f}, backward transfer {m['backward_transfer']:.3f}"
                    if "forgetting" in m else ""))
    return "\n".join(lines)


def _hparam(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--hparam: write KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    defaults = ContinualSettings()
    p = argparse.ArgumentParser(prog="python -m dpokit.tasks.continual", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=defaults.output_dir)
    p.add_argument("--tasks", nargs="+", default=list(defaults.tasks), choices=list(CONTINUAL_TASKS))
    p.add_argument("--loss", default=defaults.loss)
    p.add_argument("--hparam", type=_hparam, action="append", default=[], help="loss hyperparameter KEY=VALUE")
    for name in ("beta", "sft_weight", "lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("seed", "n_train_prompts", "n_eval_prompts", "samples_per_prompt", "warmup_steps", "epochs"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = p.parse_args(argv)
    settings = ContinualSettings(output_dir=args.out, tasks=tuple(args.tasks), loss=args.loss,
                                 loss_hparams=dict(args.hparam), beta=args.beta, sft_weight=args.sft_weight,
                                 lr=args.lr, seed=args.seed, n_train_prompts=args.n_train_prompts,
                                 n_eval_prompts=args.n_eval_prompts, samples_per_prompt=args.samples_per_prompt,
                                 warmup_steps=args.warmup_steps, epochs=args.epochs)
    return run_continual(settings, log=log)


if __name__ == "__main__":
    main()
