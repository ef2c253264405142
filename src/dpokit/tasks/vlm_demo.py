"""`dpokit demo --modality vlm`: DPO on a tiny vision-language model, the colour task, no downloads.

1. build a processor (word-level tokenizer with ``<image>``, CLIP image processor) and a tiny Llava
   in-process;
2. supervised warm-up on noisy demonstrations (the right colour ``warmup_accuracy`` of the time,
   another colour otherwise), vision tower frozen;
3. preference pairs on training images: chosen = the right colour, rejected = the warm-up model's
   most likely wrong colour; written in TRL's vision format (image files + JSONL);
4. DPO through the regular trainer (``model.kind: vlm``, prompt-shared layout, the warm-up model
   saved with its processor as the model and the reference);
5. before / after on held-out images: the expected reward of a sampled answer (the probability of
   the right colour word: the answer's first word decides the reward), greedy accuracy, and the
   implicit-reward accuracy on held-out pairs; a table and ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..data.vision import collate_vision, load_vision_examples, tokenize_vision_examples
from ..losses import get_spec
from ..paths import safe_join
from ..scoring.vlm import VisionLogProbEngine
from ..tiny import tiny_llava, tiny_vlm_processor
from . import colours
from .experiment import (DemoRun, LossDemoSettings, load_models, loss_hparams, run_trainer, torch_threads,
                         train_section, vision_sft_steps)


@dataclass
class VLMDemoSettings(LossDemoSettings):
    output_dir: str = "runs/demo-vlm"
    n_train: int = 256
    n_eval: int = 64
    warmup_steps: int = 100
    warmup_accuracy: float = 0.6
    warmup_lr: float = 3e-3
    warmup_vision: bool = True  # the warm-up also trains the (random) vision tower; DPO keeps it frozen
    dpo_epochs: int = 2
    dpo_lr: float = 1e-3
    dpo_batch_size: int = 16
    beta: float = 0.1
    layout: str = "prompt_shared"
    hidden_size: int = 64
    threads: int = 1  # torch threads while the demo runs (a tiny model: more threads only add overhead)


def colour_ids(tokenizer) -> List[int]:
    return [tokenizer.convert_tokens_to_ids(word) for word in colours.COLOURS]


@torch.no_grad()
def answer_probabilities(model, processor, items: Sequence[Tuple[str, Any]], batch: int = 32) -> torch.Tensor:
    """``[N, C]``: the model's probability of each colour word as the first answer token, per image."""
    template = processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    ids = colour_ids(processor.tokenizer)
    out = []
    model.eval()
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        inputs = processor(images=[image for _, image in chunk], text=[template] * len(chunk),
                           add_special_tokens=False, return_tensors="pt")
        logits = model(**inputs).logits[:, -1].float()  # one prompt length: no padding
        out.append(logits.softmax(-1)[:, ids])
    return torch.cat(out)


def evaluate(model, reference_model, processor, items, heldout) -> Dict[str, float]:
    probs = answer_probabilities(model, processor, items)
    truth = torch.tensor([list(colours.COLOURS).index(colour) for colour, _ in items])
    engine = VisionLogProbEngine(get_spec("dpo").needs, processor.tokenizer.pad_token_id, "prompt_shared")
    with torch.no_grad():
        policy = engine.token_logprobs(model, heldout.groups).sums
        reference = engine.token_logprobs(reference_model, heldout.groups).sums
    margin = (policy[0::2] - reference[0::2]) - (policy[1::2] - reference[1::2])
    return {
        "reward": float(probs.gather(1, truth[:, None]).mean()),
        "greedy_accuracy": float((probs.argmax(1) == truth).float().mean()),
        "preference_accuracy": float((margin > 0).float().mean() + 0.5 * (margin == 0).float().mean()),
        "colour_mass": float(probs.sum(1).mean()),
    }


def warm_up(model, processor, items, settings: VLMDemoSettings) -> float:
    """Supervised warm-up on noisy demonstrations (the vision tower trains with ``warmup_vision``)."""
    import random

    rng = random.Random(settings.seed)
    names = list(colours.COLOURS)
    rows = []
    for colour, image in items:
        word = colour if rng.random() < settings.warmup_accuracy else rng.choice([c for c in names if c != colour])
        rows.append({"images": [image], "prompt": colours.prompt_messages(), "chosen": colours.answer_messages(word),
                     "rejected": colours.answer_messages("the square")})
    from ..data.vision import parse_vision_record

    examples = [parse_vision_record(f"warm-up {i}", r, "pairs", ".")[0] for i, r in enumerate(rows)]
    tokenized, _ = tokenize_vision_examples(examples, processor)
    for name, param in model.named_parameters():
        param.requires_grad_(settings.warmup_vision or "vision_tower" not in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.warmup_lr)
    engine = VisionLogProbEngine(get_spec("sft").needs, processor.tokenizer.pad_token_id, settings.layout)
    nll = vision_sft_steps(model, engine, tokenized, optimizer, settings.warmup_steps, 16, settings.seed)
    for param in model.parameters():
        param.requires_grad_(True)
    return nll


def wrong_answers(model, processor, items) -> List[str]:
    """The warm-up model's most likely wrong colour per image (on-policy rejected answers)."""
    probs = answer_probabilities(model, processor, items)
    names = list(colours.COLOURS)
    for i, (colour, _) in enumerate(items):
        probs[i, names.index(colour)] = -1.0
    return [names[j] for j in probs.argmax(1).tolist()]


def run_vlm_demo(settings: VLMDemoSettings, log=print) -> Dict[str, Any]:
    """The whole experiment (module docstring) with ``settings.threads`` torch threads; returns the summary."""
    with torch_threads(settings.threads):
        return _run(settings, log)


def _run(settings: VLMDemoSettings, log) -> Dict[str, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = get_spec(settings.loss)
    if spec.needs.data != "pairs":
        raise ValueError(f"`dpokit demo --modality vlm --loss` takes a pairwise loss; {spec.name!r} trains on "
                         f"{spec.needs.data} data")
    run = DemoRun.start(settings.output_dir, settings.seed, log)
    log(f"[1/5] processor and tiny Llava (CLIP vision tower, Llama with hidden {settings.hidden_size})")
    processor = tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llava(processor, hidden_size=settings.hidden_size, seed=settings.seed)
    train_items = colours.draw_items(settings.n_train, settings.seed)
    eval_items = colours.draw_items(settings.n_eval, settings.seed + 1000)

    log(f"[2/5] supervised warm-up on answers that are right {settings.warmup_accuracy:.0%} of the time")
    nll = warm_up(model, processor, train_items, settings)
    warmup_dir = run.save(model, processor, "warmup")
    log(f"      warm-up NLL {nll:.3f}; saved to {warmup_dir}")

    log("[3/5] pairs: the right colour over the warm-up model's most likely wrong one")
    data_dir = run.path("data")
    train_path = colours.write_records(colours.pair_records(train_items, wrong_answers(model, processor, train_items),
                                                            data_dir, "train"), safe_join(data_dir, "train.jsonl"))
    eval_path = colours.write_records(colours.pair_records(eval_items, wrong_answers(model, processor, eval_items),
                                                           data_dir, "eval"), safe_join(data_dir, "eval.jsonl"))
    heldout_tokens, _ = tokenize_vision_examples(load_vision_examples(eval_path), processor)
    heldout = collate_vision(heldout_tokens)
    before = evaluate(model, model, processor, eval_items, heldout)

    log(f"[4/5] {settings.loss!r} through the trainer (model.kind: vlm, layout {settings.layout})")
    config = run_trainer({
        "model": {"name_or_path": warmup_dir, "kind": "vlm"},
        "data": {"train": train_path, "eval": eval_path, "max_length": 64},
        "loss": {"name": settings.loss, **loss_hparams(spec, settings.loss_hparams, settings.beta)},
        "reference": {"kind": "copy" if spec.needs.reference else "none"},
        "train": train_section(run.path("train"), settings.seed, settings.dpo_epochs, settings.dpo_batch_size,
                               settings.dpo_lr, 8, layout=settings.layout),
    })

    log("[5/5] evaluating before and after on held-out images")
    final_dir = run.path("train", "final")
    aligned, reference_model = load_models(AutoModelForImageTextToText, final_dir, warmup_dir)
    after = evaluate(aligned, reference_model, AutoProcessor.from_pretrained(final_dir), eval_items, heldout)
    return run.finish({"task": "colours", "loss": settings.loss, "loss_hparams": config.loss, "before": before,
                       "after": after, "train_pairs": settings.n_train}, TABLE_ROWS)


TABLE_ROWS = (("expected reward (sampled)", "reward"), ("greedy accuracy", "greedy_accuracy"),
              ("preference accuracy", "preference_accuracy"))
