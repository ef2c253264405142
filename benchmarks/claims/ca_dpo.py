"""Claim: adding modality-conflict pairs (CA-DPO) to plain DPO pairs raises accuracy on conflicting
image/caption prompts without lowering it on consistent ones (SABER-LLM, arXiv 2601.18321).

Setting, on the colour task (``dpokit.tasks.colours``: 16 x 16 images of a coloured square on noise)
and a tiny Llava (hidden 64) built in code, per seed:

* two kinds of prompt: the colour question (``what colour is the square``) and the caption question
  of :mod:`dpokit.data.conflict` (image + ``caption: a <colour> square. does the caption match the
  image?``), answered in the evidence format ``image: ...; caption: ...; consistent|conflict; yes|no``;
* stage 1, a supervised warm-up on noisy demonstrations (vision tower trained): colour answers right
  60% of the time (as ``dpokit demo --modality vlm``); caption answers with the caption of another
  image a quarter of the time, and half of the caption answers the text-only shortcut
  ``caption: ...; yes`` (a model that trusts the caption), the other half the evidence path;
* stage 2, DPO (beta 0.1, lr 1e-3, batch 16, 2 epochs, prompt-shared layout, vision tower frozen,
  the warm-up model as reference) from the warm-up model, with one of two pair sets:

  - ``plain dpo``: the colour task's pairs, the right colour over another colour (one per image);
  - ``plain + conflict (ca-dpo)``: the same pairs plus :func:`dpokit.data.conflict.ca_dpo_pairs`
    on the same images (one conflict pair per image, a consistent pair for half of them).

Held-out: 64 new images, each asked with its own caption (consistent) and with another's (conflict);
greedy answers; accuracy = the answer's final label (``yes`` / ``no``) is right; also the colour
question's greedy accuracy.

Criteria (fixed before running), differences ca-dpo - plain paired by seed, 3 seeds:
* conflict accuracy: the 95% t-interval of the difference lies above 0;
* consistent accuracy: the mean difference is above -0.05 (not worse by more than 5 points).
The claim holds when both do. Reported alongside: the warm-up model's accuracies, colour accuracy.

    python benchmarks/claims/ca_dpo.py [--seeds 0 1 2] [--out runs/claims/ca_dpo] [--quick]
"""

from __future__ import annotations

import json
import os
import random
import time

import common

PLAIN = "plain dpo"
CA = "plain + conflict (ca-dpo)"
SETTINGS = {"n_train": 256, "n_eval": 64, "warmup_steps": 250, "epochs": 2, "batch": 16}
QUICK = {"n_train": 16, "n_eval": 8, "warmup_steps": 4, "epochs": 1, "batch": 8}
KEYS = ("conflict_accuracy", "consistent_accuracy", "colour_accuracy")


def caption(colour: str) -> str:
    return f"a {colour} square"


def corpus():
    from dpokit.data import conflict
    from dpokit.tasks import colours

    texts = colours.vocabulary_corpus()
    for a in colours.COLOURS:
        for b in colours.COLOURS:
            texts.append(" ".join([conflict.prompt_for(caption(b))[0]["content"][1]["text"],
                                   conflict.evidence_answer(caption(a), caption(b)),
                                   conflict.shortcut_answer(caption(b))]))
    return texts


def tokenize(rows, processor):
    from dpokit.data.vision import parse_vision_record, tokenize_vision_examples

    examples = [parse_vision_record(f"record {i}", r, "pairs", ".")[0] for i, r in enumerate(rows)]
    return tokenize_vision_examples(examples, processor, max_length=128)[0]


def warmup_rows(items, seed):
    """Noisy demonstrations (module docstring) as pair records whose ``chosen`` is the demonstration."""
    from dpokit.data import conflict
    from dpokit.tasks import colours

    rng = random.Random(seed)
    names = list(colours.COLOURS)
    rows = []
    for colour, image in items:
        word = colour if rng.random() < 0.6 else rng.choice([c for c in names if c != colour])
        rows.append({"images": [image], "prompt": colours.prompt_messages(), "chosen": colours.answer_messages(word),
                     "rejected": colours.answer_messages("the square")})
        shown = caption(rng.choice([c for c in names if c != colour])) if rng.random() < 0.25 else caption(colour)
        answer = conflict.shortcut_answer(shown) if rng.random() < 0.5 else conflict.evidence_answer(caption(colour),
                                                                                                   shown)
        rows.append({"images": [image], "prompt": conflict.prompt_for(shown), "chosen": colours.answer_messages(answer),
                     "rejected": colours.answer_messages("the square")})
    return rows


def plain_pairs(items, seed):
    from dpokit.tasks import colours

    rng = random.Random(seed)
    names = list(colours.COLOURS)
    return [{"images": [image], "prompt": colours.prompt_messages(), "chosen": colours.answer_messages(colour),
             "rejected": colours.answer_messages(rng.choice([c for c in names if c != colour]))}
            for colour, image in items]


def conflict_pairs(items, seed):
    from dpokit.data.conflict import ca_dpo_pairs

    rows = ca_dpo_pairs([(image, caption(colour)) for colour, image in items], seed=seed, consistent_fraction=0.5)
    return [{k: v for k, v in r.items() if k != "split"} for r in rows]


def warm_up(model, processor, rows, steps, batch, seed):
    import torch

    from dpokit.losses import get_spec
    from dpokit.scoring.vlm import VisionLogProbEngine
    from dpokit.tasks.experiment import vision_sft_steps

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    engine = VisionLogProbEngine(get_spec("sft").needs, processor.tokenizer.pad_token_id, "prompt_shared")
    return vision_sft_steps(model, engine, tokenize(rows, processor), optimizer, steps, batch, seed)


def train_dpo(model, reference, processor, rows, epochs, batch, seed):
    import torch

    from dpokit.data.vision import collate_vision
    from dpokit.losses import get_loss
    from dpokit.reference import ModelReference
    from dpokit.scoring.vlm import VisionLogProbEngine

    tokenized = tokenize(rows, processor)
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name)  # model.freeze_vision's default
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    loss_fn = get_loss("dpo", beta=0.1)
    engine = VisionLogProbEngine(loss_fn.needs, processor.tokenizer.pad_token_id, "prompt_shared")
    ref = ModelReference(reference)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(tokenized), generator=generator).tolist()
        for start in range(0, len(order), batch):
            loss = loss_fn(engine.loss_inputs(model, collate_vision([tokenized[i] for i in order[start:start + batch]]),
                                              ref)).loss.mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()


def greedy(model, processor, images, prompt, max_new=16):
    """Greedy answers to one prompt (message list) for each image (one prompt length: no padding)."""
    import torch

    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=list(images), text=[text] * len(images), add_special_tokens=False, return_tensors="pt")
    ids, eos = inputs["input_ids"], processor.tokenizer.eos_token_id
    start = ids.shape[1]
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    model.eval()
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[:, -1]
            logits[:, image_id] = float("-inf")  # an answer holds no image placeholder
            step = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
            if bool((ids[:, start:] == eos).any(1).all()):
                break
    out = []
    for row in ids[:, start:].tolist():
        row = row[:row.index(eos)] if eos in row else row
        out.append(processor.tokenizer.decode(row, skip_special_tokens=True))
    return out


def evaluate(model, processor, items, seed):
    from dpokit.data import conflict
    from dpokit.tasks import colours

    rng = random.Random(seed)
    names = list(colours.COLOURS)
    right = {"consistent": 0, "conflict": 0, "colour": 0}
    by_prompt = {}  # images grouped by the caption shown (one prompt per greedy batch)
    for colour, image in items:
        other = rng.choice([c for c in names if c != colour])
        by_prompt.setdefault(("consistent", colour), []).append((colour, image))
        by_prompt.setdefault(("conflict", other), []).append((colour, image))
    for (split, shown), group in by_prompt.items():
        answers = greedy(model, processor, [image for _, image in group], conflict.prompt_for(caption(shown)))
        want = "yes" if split == "consistent" else "no"
        right[split] += sum(conflict.answer_label(a) == want for a in answers)
    answers = greedy(model, processor, [image for _, image in items], colours.prompt_messages(), max_new=3)
    right["colour"] = sum(colours.reward(colour, a) for (colour, _), a in zip(items, answers))
    n = len(items)
    return {"conflict_accuracy": right["conflict"] / n, "consistent_accuracy": right["consistent"] / n,
            "colour_accuracy": right["colour"] / n}


def run_seed(seed, settings, directory):
    """Warm-up, then each method from it; ``{"warm-up": metrics, PLAIN: metrics, CA: metrics}`` (cached)."""
    import copy

    import torch

    from dpokit.tasks import colours
    from dpokit.tiny import tiny_llava, tiny_vlm_processor

    path = os.path.join(directory, f"seed{seed}.json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    started = time.time()
    torch.manual_seed(seed)
    processor = tiny_vlm_processor(corpus(), vocab_size=128, word_level=True)
    model = tiny_llava(processor, hidden_size=64, seed=seed)
    train = colours.draw_items(settings["n_train"], seed)
    heldout = colours.draw_items(settings["n_eval"], seed + 1000)
    warm_up(model, processor, warmup_rows(train, seed), settings["warmup_steps"], settings["batch"], seed)
    out = {"warm-up": evaluate(model, processor, heldout, seed)}
    plain = plain_pairs(train, seed)
    for label, rows in ((PLAIN, plain), (CA, plain + conflict_pairs(train, seed))):
        policy = copy.deepcopy(model)
        t0 = time.time()
        train_dpo(policy, model, processor, rows, settings["epochs"], settings["batch"], seed)
        out[label] = {**evaluate(policy, processor, heldout, seed), "train_pairs": len(rows),
                      "seconds": time.time() - t0}
    out["seconds"] = time.time() - started
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def main(argv=None):
    import torch

    args = common.parser(__doc__.splitlines()[0], "runs/claims/ca_dpo").parse_args(argv)
    started = time.time()
    common.quiet_logs()
    torch.set_num_threads(1)
    settings = QUICK if args.quick else SETTINGS
    results = {"warm-up": {}, PLAIN: {}, CA: {}}
    for seed in common.seeds_of(args):
        per = run_seed(seed, settings, args.out)
        for label in results:
            results[label][seed] = per[label]
        print(f"   seed {seed}: " + "; ".join(f"{label} conflict {per[label]['conflict_accuracy']:.3f} consistent "
                                             f"{per[label]['consistent_accuracy']:.3f}" for label in results))
    lines = ["| model | n | " + " | ".join(KEYS) + " | per-seed conflict accuracy |",
             "|---|---|" + "---|" * len(KEYS) + "---|"]
    for label, per_seed in results.items():
        cells = [common.interval(common.metric(results, label, k)) for k in KEYS]
        seeds = " / ".join(f"{per_seed[s]['conflict_accuracy']:.3f}" for s in sorted(per_seed))
        lines.append(f"| {label} | {len(per_seed)} | " + " | ".join(cells) + f" | {seeds} |")
    lines.append("")
    diffs = {k: common.paired(results, PLAIN, CA, k) for k in KEYS}
    for k in KEYS:
        lines.append(f"ca-dpo - plain: {k} {common.interval(diffs[k])} (95% CI {common.ci_text(diffs[k])})")
    low = common.lower(diffs["conflict_accuracy"])
    consistent = diffs["consistent_accuracy"]
    checks = [("conflict accuracy: CI of the difference above 0", None if low is None else low > 0),
              ("consistent accuracy: mean difference above -0.05",
               None if low is None else consistent["mean"] > -0.05)]
    lines.append(common.verdict(checks))
    return common.finish("ca_dpo", args, results, "\n".join(lines), started, sweep=False)


if __name__ == "__main__":
    main()
