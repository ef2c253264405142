"""The shared skeleton of the built-in demos (`dpokit demo`): what every one of them does the same way.

A demo builds a tiny model in-process, warms it up, writes its data and a train config, trains
through the regular trainer, evaluates before and after, prints a before/after table and writes
``summary.json``. The task-specific parts (the task, its evaluation, its pairs) stay in each demo;
this module holds the rest:

* :class:`LossDemoSettings`: the settings every loss-driven demo starts with;
* :class:`DemoRun`: the run directory, the seed, the clock; saving a model with its tokenizer,
  processor or scheduler; the closing table, ``summary.json`` (with ``seconds``, optionally
  ``cpu_seconds``, and ``run_dir`` appended) and the closing lines;
* :func:`tiny_text_model`, :func:`sft_warm_up`: the word-level tokenizer and tiny Llama of the text
  demos and their supervised warm-up on demonstrations; :func:`vision_sft_steps`, the same warm-up
  loop for a vision-language model;
* :func:`loss_hparams`, :func:`train_section`, :func:`run_trainer`, :func:`load_models`: the loss
  section with the demo's default ``beta``, the ``train`` section every demo uses, the trainer run,
  and loading the saved models back;
* :func:`format_table`, :func:`torch_threads`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..paths import safe_join

TABLE_ROWS = (("task reward (held-out)", "reward"), ("preference accuracy", "preference_accuracy"),
              ("KL to reference", "kl"), ("response length", "length"))


def format_table(before: Dict[str, float], after: Dict[str, float], rows=TABLE_ROWS, width: int = 26) -> str:
    """The demo's before/after table: ``rows`` of ``(label, summary key)``, labels ``width`` wide."""
    lines = [f"{'metric':<{width}}{'before':>10}{'after':>10}", "-" * (width + 20)]
    for label, key in rows:
        lines.append(f"{label:<{width}}{before[key]:>10.3f}{after[key]:>10.3f}")
    return "\n".join(lines)


@dataclass
class LossDemoSettings:
    """The first settings of a demo that trains with a named loss; a demo's subclass adds its own and
    sets its ``output_dir`` default (the fields keep this order)."""

    output_dir: str = "runs/demo"
    loss: str = "dpo"
    loss_hparams: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class DemoRun:
    """One demo's run directory, seed and clock. :meth:`start` creates the directory and seeds torch."""

    out: str
    seed: int
    log: Callable[[str], Any] = print
    started: float = field(default_factory=time.time)
    cpu_started: float = field(default_factory=time.process_time)

    @classmethod
    def start(cls, output_dir: str, seed: int, log=print) -> "DemoRun":
        run = cls(output_dir, seed, log)
        os.makedirs(output_dir, exist_ok=True)
        torch.manual_seed(seed)
        return run

    def path(self, *parts: str) -> str:
        return safe_join(self.out, *parts)

    def save(self, model, companion, *parts: str) -> str:
        """``model`` (safetensors) and its tokenizer / processor / scheduler into ``out/parts``; the path."""
        folder = self.path(*parts)
        model.save_pretrained(folder, safe_serialization=True)
        companion.save_pretrained(folder)
        return folder

    def finish(self, summary: Dict[str, Any], rows=TABLE_ROWS, width: int = 26, cpu: bool = False,
               notes: Sequence[str] = ()) -> Dict[str, Any]:
        """Append ``seconds`` (and ``cpu_seconds`` with ``cpu``) and ``run_dir`` to ``summary``, write
        ``summary.json``, log the before/after table of ``summary["before"]``/``["after"]``, the
        ``notes`` lines and the closing line; returns the summary."""
        summary["seconds"] = round(time.time() - self.started, 1)
        if cpu:
            summary["cpu_seconds"] = round(time.process_time() - self.cpu_started, 1)
        summary["run_dir"] = self.out
        path = self.path("summary.json")
        with open(path, "w") as handle:
            json.dump(summary, handle, indent=2)
        self.log(format_table(summary["before"], summary["after"], rows, width=width))
        for line in notes:
            self.log(line)
        clock = f"{summary['seconds']} s" + (f", {summary['cpu_seconds']} s CPU" if cpu else "")
        self.log(f"summary: {path}  ({clock})")
        return summary


def tiny_text_model(corpus: Iterable[str], hidden_size: int, layers: int, max_positions: int, seed: int):
    """A word-level tokenizer (64 words at most) of ``corpus`` and a tiny Llama for it: ``(tokenizer, model)``."""
    from ..tiny import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(corpus, vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=hidden_size, num_layers=layers,
                       max_position_embeddings=max_positions, seed=seed, tokenizer=tokenizer)
    return tokenizer, model


def sft_warm_up(run: DemoRun, model, tokenizer, demonstrations, steps: int) -> Tuple[float, str]:
    """Supervised warm-up on ``demonstrations`` (seeded by the run), saved to ``out/warmup``: ``(NLL, dir)``."""
    from ..train.sft import sft_train

    nll = sft_train(model, tokenizer, demonstrations, steps=steps, seed=run.seed)
    return nll, run.save(model, tokenizer, "warmup")


def vision_sft_steps(model, engine, examples, optimizer, steps: int, batch_size: int, seed: int) -> float:
    """``steps`` of supervised warm-up on tokenized vision ``examples`` (the first completion of each, the
    demonstration): batches of ``batch_size`` drawn with replacement (seeded by ``seed``), mean per-token
    NLL through ``engine`` (a :class:`~dpokit.scoring.vlm.VisionLogProbEngine`); returns the last NLL."""
    from ..data.vision import collate_vision

    generator = torch.Generator().manual_seed(seed)
    model.train()
    nll = float("nan")
    for _ in range(steps):
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        batch = collate_vision([examples[i] for i in picks])
        groups = type(batch.groups)((prompt, completions[:1]) for prompt, completions in batch.groups)
        groups.pixel_values, groups.image_sizes = batch.pixel_values, batch.image_sizes
        groups.image_grid_thw = batch.image_grid_thw  # patch grids (Qwen2-VL-style processors)
        lp = engine.token_logprobs(model, groups)
        loss = -(lp.sums / lp.lengths).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        nll = float(loss.detach())
    return nll


def pretrain_denoiser(model, steps: int, lr: float, seed: int, step_loss) -> float:
    """Plain denoising pretraining of a demo's tiny denoiser: ``steps`` AdamW steps (linear warm-up over
    20 steps, then linear decay to 10%), gradient norm clipped at 1.0, each on ``step_loss(generator)``
    (fresh task samples drawn from the seeded generator). Returns the last 20 steps' mean loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    losses: List[float] = []
    model.train()
    for _ in range(steps):
        loss = step_loss(generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return sum(losses[-20:]) / len(losses[-20:])


def loss_hparams(spec, hparams: Dict[str, Any], beta: float) -> Dict[str, Any]:
    """``hparams`` with ``beta`` added when the loss scales a reference log-ratio by a ``beta`` not given."""
    out = dict(hparams)
    if spec.needs.reference and "beta" in spec.defaults and "beta" not in hparams:
        out["beta"] = beta
    return out


def train_section(output_dir: str, seed: int, epochs: int, batch_size: int, lr: float, log_every: int,
                  **extra: Any) -> Dict[str, Any]:
    """The ``train`` section of a demo's config (cosine schedule, 5% warm-up, no reporting), plus ``extra``."""
    return {"output_dir": output_dir, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "scheduler": "cosine", "warmup_ratio": 0.05, "log_every": log_every, "report_to": [],
            "progress_bar": False, "mixed_precision": "no", **extra}


def run_trainer(raw: Dict[str, Any], scorer_wrapper: Optional[Callable] = None):
    """Build the config from ``raw`` and train with the regular trainer; returns the config."""
    from ..config import from_dict
    from ..train import Trainer

    config = from_dict(raw)
    Trainer(config, scorer_wrapper=scorer_wrapper).fit()
    return config


def load_models(auto_class, *folders: str):
    """``auto_class.from_pretrained`` (safetensors) of each folder, in order."""
    return [auto_class.from_pretrained(folder, use_safetensors=True) for folder in folders]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
