"""Continual preference learning on a vision-language model: three image questions learned in order.

The tasks share the colour task's images (:mod:`dpokit.tasks.colours`: a coloured square on grey
noise) and one tiny Llava (:mod:`dpokit.tiny`), and answer in the same four colour words, so learning
one task can undo another (the setting of :mod:`dpokit.tasks.continual`, with images):

* ``colour``: ``what colour is the square`` -> the square's colour;
* ``next``: ``which colour follows the square`` -> the next colour in ``red, green, blue, yellow``;
* ``previous``: ``which colour precedes the square`` -> the previous one.

Reward: 1 when the answer's first word is right; a model's held-out reward on a task is the expected
reward of a sampled answer (the probability of the right word, as ``dpokit demo --modality vlm``).

1. a supervised warm-up on demonstrations of *every* task, right ``warmup_accuracy`` of the time
   (another colour otherwise), the vision tower training too;
2. for each task in order: pairs on that task's training images, chosen = the right colour, rejected =
   the current model's most likely wrong colour (on-policy); ``epochs`` of ``loss + sft_weight * NLL(y_w)``
   (the phi-DPO paper's objective, Eq. 17, with either loss), the model after the previous task as the
   starting point and the reference, vision tower frozen, prompt-shared layout;
3. after each task, the held-out reward on every task: the reward matrix ``R[t][j]`` and its metrics
   (:func:`dpokit.tasks.continual.continual_metrics`: forgetting, backward transfer, final average).

``run_vlm_continual(settings)`` runs it in process (no files but ``summary.json``).
``benchmarks/claims/vlm_continual.py`` compares phi-DPO with DPO over seeds.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from ..losses import get_loss, get_spec
from ..paths import safe_join
from ..reference import ModelReference
from ..scoring.vlm import VisionLogProbEngine
from ..tiny import tiny_llava, tiny_vlm_processor
from . import colours
from .continual import continual_metrics
from .experiment import torch_threads, vision_sft_steps

NAMES = list(colours.COLOURS)
QUESTIONS = {"colour": ("what colour is the square", 0), "next": ("which colour follows the square", 1),
             "previous": ("which colour precedes the square", -1)}


def answer(task: str, colour: str) -> str:
    return NAMES[(NAMES.index(colour) + QUESTIONS[task][1]) % len(NAMES)]


def prompt(task: str) -> List[Dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[task][0]}]}]


def corpus() -> List[str]:
    words = " ".join(q for q, _ in QUESTIONS.values())
    return [f"<|user|> <|assistant|> {words} " + " ".join(NAMES)] * 4


@dataclass
class VLMContinualSettings:
    output_dir: str = "runs/vlm-continual"
    tasks: Sequence[str] = ("colour", "next", "previous")
    warmup_tasks: Optional[Sequence[str]] = None  # the warm-up's demonstrations (None: every task of ``tasks``)
    loss: str = "dpo"
    loss_hparams: Dict[str, Any] = field(default_factory=dict)
    beta: float = 0.1
    sft_weight: float = 1.0
    seed: int = 0
    n_train: int = 128  # images per task
    n_eval: int = 64  # held-out images per task
    warmup_steps: int = 400
    warmup_accuracy: float = 0.8  # below ~0.6 the warm-up stays at chance (0.25) on every task within 400 steps
    warmup_lr: float = 3e-3
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 16
    hidden_size: int = 64
    threads: int = 1


def _tokenize(processor, task: str, items, rejected: Sequence[str], where: str):
    rows = [{"images": [image], "prompt": prompt(task), "chosen": colours.answer_messages(answer(task, colour)),
             "rejected": colours.answer_messages(wrong)} for (colour, image), wrong in zip(items, rejected)]
    examples = [parse_vision_record(f"{where} {i}", r, "pairs", ".")[0] for i, r in enumerate(rows)]
    return tokenize_vision_examples(examples, processor)[0]


@torch.no_grad()
def answer_probabilities(model, processor, task: str, items) -> torch.Tensor:
    """``[N, 4]``: the probability of each colour word as the first answer token."""
    text = processor.apply_chat_template(prompt(task), add_generation_prompt=True, tokenize=False)
    ids = [processor.tokenizer.convert_tokens_to_ids(w) for w in NAMES]
    model.eval()
    out = []
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        inputs = processor(images=[im for _, im in chunk], text=[text] * len(chunk), add_special_tokens=False,
                           return_tensors="pt")
        out.append(model(**inputs).logits[:, -1].float().softmax(-1)[:, ids])
    return torch.cat(out)


def held_out_reward(model, processor, task: str, items) -> float:
    probs = answer_probabilities(model, processor, task, items)
    truth = torch.tensor([NAMES.index(answer(task, colour)) for colour, _ in items])
    return float(probs.gather(1, truth[:, None]).mean())


def wrong_answers(model, processor, task: str, items) -> List[str]:
    probs = answer_probabilities(model, processor, task, items)
    for i, (colour, _) in enumerate(items):
        probs[i, NAMES.index(answer(task, colour))] = -1.0
    return [NAMES[j] for j in probs.argmax(1).tolist()]


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + size] for i in range(0, n, size)]


def warm_up(model, processor, train: Dict[str, list], settings: VLMContinualSettings) -> None:
    rng = random.Random(settings.seed)
    examples = []
    for task in settings.warmup_tasks or settings.tasks:
        labels = [answer(task, c) if rng.random() < settings.warmup_accuracy else
                  rng.choice([w for w in NAMES if w != answer(task, c)]) for c, _ in train[task]]
        # the demonstration is the "chosen" side; the rejected side is never scored here
        examples += _tokenize(processor, task, train[task], ["the square"] * len(labels), "warm-up")
        for ex, label in zip(examples[-len(labels):], labels):
            ex.completions[0] = processor.tokenizer(label, add_special_tokens=False)["input_ids"] + \
                [processor.tokenizer.eos_token_id]
    engine = VisionLogProbEngine(get_spec("sft").needs, processor.tokenizer.pad_token_id, "prompt_shared")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.warmup_lr)
    vision_sft_steps(model, engine, examples, optimizer, settings.warmup_steps, settings.batch_size, settings.seed)


def train_task(model, processor, pairs, settings: VLMContinualSettings, seed: int) -> float:
    """One task: ``epochs`` of ``loss + sft_weight * NLL(y_w)`` from (and against) the current model."""
    loss_fn = get_loss(settings.loss, **{"beta": settings.beta, **settings.loss_hparams})
    engine = VisionLogProbEngine(loss_fn.needs, processor.tokenizer.pad_token_id, "prompt_shared")
    reference = ModelReference(copy.deepcopy(model))
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    last = float("nan")
    for _ in range(settings.epochs):
        for picks in _batches(len(pairs), settings.batch_size, generator):
            inputs = engine.loss_inputs(model, collate_vision([pairs[i] for i in picks]), reference)
            loss = loss_fn(inputs).loss.mean() - settings.sft_weight * inputs.mean_logps("chosen").mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last = float(loss.detach())
    for param in model.parameters():
        param.requires_grad_(True)
    return last


def run_vlm_continual(settings: VLMContinualSettings, log=print) -> Dict[str, Any]:
    """The whole sequence (module docstring); returns the summary (also written to ``summary.json``)."""
    with torch_threads(settings.threads):
        return _run(settings, log)


def _items(settings: VLMContinualSettings) -> Tuple[Dict[str, list], Dict[str, list]]:
    every = list(dict.fromkeys(list(settings.warmup_tasks or ()) + list(settings.tasks)))
    offset = {task: 10 * k for k, task in enumerate(every)}
    train = {t: colours.draw_items(settings.n_train, 1000 * settings.seed + offset[t]) for t in every}
    held = {t: colours.draw_items(settings.n_eval, 1000 * settings.seed + offset[t] + 500) for t in every}
    return train, held


def _run(settings: VLMContinualSettings, log) -> Dict[str, Any]:
    unknown = [t for t in list(settings.tasks) + list(settings.warmup_tasks or ()) if t not in QUESTIONS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(QUESTIONS)}")
    started = time.time()
    torch.manual_seed(settings.seed)
    processor = tiny_vlm_processor(corpus(), vocab_size=64, word_level=True)
    model = tiny_llava(processor, hidden_size=settings.hidden_size, seed=settings.seed)
    train, held = _items(settings)
    warm_up(model, processor, train, settings)
    warm = [held_out_reward(model, processor, j, held[j]) for j in settings.tasks]
    log(f"   warm-up: held-out reward {' / '.join(f'{r:.3f}' for r in warm)}")
    matrix: List[List[float]] = []
    for t, task in enumerate(settings.tasks):
        pairs = _tokenize(processor, task, train[task], wrong_answers(model, processor, task, train[task]), task)
        train_task(model, processor, pairs, settings, seed=settings.seed * 100 + t)
        matrix.append([held_out_reward(model, processor, j, held[j]) for j in settings.tasks])
        log(f"   after {task}: {' / '.join(f'{r:.3f}' for r in matrix[-1])}")
    summary = {"settings": asdict(settings), "warmup": warm, "matrix": matrix, "metrics": continual_metrics(matrix),
               "seconds": round(time.time() - started, 1)}
    os.makedirs(settings.output_dir, exist_ok=True)
    with open(safe_join(settings.output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary
