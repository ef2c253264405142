"""``dpokit bench --modality vlm``: one DPO step on a tiny Llava, dpokit's ``vlm`` scorer against TRL's.

The model is a tiny Llava (:func:`dpokit.tiny.tiny_llava`: CLIP vision tower, two-layer projector,
Llama) built from the seed at the size the options give (``--hidden-size``, ``--layers``,
``--heads`` for the language model; ``--vision-hidden``, ``--vision-layers``, ``--image-size``,
``--patch-size`` for the tower, ``(image_size / patch_size) ** 2`` image tokens per image). The data
is a fixed sequence of image + text pairs drawn from the seed (:mod:`dpokit.tasks.colours` images,
questions of several lengths, answers of several lengths), written as PNG files and TRL vision-format
records. Every configuration runs the same batches from the same weights in its own process:

* dpokit: :class:`dpokit.scoring.vlm.VisionLogProbEngine` (``--layouts``, default ``padded`` and
  ``prompt_shared``) -> DPO loss -> backward -> clip -> AdamW, the image encoded once per pair;
* TRL: ``DPOTrainer.training_step`` with its vision collator (each image in the chosen and the
  rejected row) on the same records, then the same optimizer step.

Both freeze the vision tower (dpokit's ``model.freeze_vision`` default); the projector and the
language model train. Batches are collated before the clock starts, for both. The report gives
pairs/s, tokens/s (image tokens included), peak memory, each configuration's speed and memory as
multiples of TRL's, the first-step losses of both (the policy and the reference start from
different weights, so they are not log 2) and whether the token ids of TRL's collator equal dpokit's.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import sys
from typing import Any, Dict, List

from ..kernels import resolve_attention
from .measure import PeakMemory, step_clock, timed_steps
from .report import cpu_name, fastest, ratios
from .workers import timed_trl_step, trl_trainer

QUESTIONS = ("what colour is the square",
             "look at the picture . what colour is the square in it",
             "the picture shows a square on grey noise . look at the square and say what colour the square is")
ANSWER_TAILS = ("", "square", "the square is that colour", "it is a square of that colour on grey noise")
VLM_LAYOUTS = ("padded", "prompt_shared")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("--modality vlm (tiny Llava)")
    group.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    group.add_argument("--patch-size", type=int, default=4, help="vision patch side (default 4: 64 image tokens)")
    group.add_argument("--vision-hidden", type=int, default=64, help="vision tower width (default 64)")
    group.add_argument("--vision-layers", type=int, default=2, help="vision tower layers (default 2)")


def corpus() -> List[str]:
    from ..tasks import colours

    words = " ".join(QUESTIONS + ANSWER_TAILS) + " " + " ".join(colours.COLOURS)
    return [f"<|user|> <|assistant|> {words}"] * 4


def records(n: int, seed: int, folder: str, image_size: int) -> List[Dict[str, Any]]:
    """``n`` pair records (PNG paths relative to ``folder``): chosen names the square's colour, rejected
    another, each followed by one of :data:`ANSWER_TAILS` (lengths differ within a pair)."""
    from ..tasks import colours

    rng = random.Random(seed)
    names = list(colours.COLOURS)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        colour = names[i % len(names)]
        relative = os.path.join("images", f"{i:05d}.png")
        colours.draw(colour, rng, image_size).save(os.path.join(folder, relative))
        wrong = rng.choice([c for c in names if c != colour])
        question = rng.choice(QUESTIONS)
        rows.append({"images": [relative],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                     "chosen": colours.answer_messages(f"{colour} {rng.choice(ANSWER_TAILS)}".strip()),
                     "rejected": colours.answer_messages(f"{wrong} {rng.choice(ANSWER_TAILS)}".strip())})
    return rows


def prepare(args, workdir: str) -> Dict[str, Any]:
    """Processor, policy and reference (different seeds) and the batches' records, saved under ``workdir``."""
    from ..tiny import tiny_llava, tiny_vlm_processor

    if args.image_size % args.patch_size:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    processor = tiny_vlm_processor(corpus(), vocab_size=256, image_size=args.image_size,
                                   patch_size=args.patch_size, word_level=True)
    sizes = dict(hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                 vision_hidden=args.vision_hidden, vision_layers=args.vision_layers)
    dirs = {}
    for name, seed in (("policy", args.seed), ("reference", args.seed + 1)):
        model = tiny_llava(processor, seed=seed, **sizes)
        dirs[name] = os.path.join(workdir, name)
        model.save_pretrained(dirs[name], safe_serialization=True)
        processor.save_pretrained(dirs[name])
    params = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    del model
    gc.collect()
    data_dir = os.path.join(workdir, "data")
    steps = args.warmup + args.steps
    rows = records(steps * args.batch_size, args.seed, data_dir, args.image_size)
    batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    return {"dirs": dirs, "data_dir": data_dir, "batches": batches, "parameters": params,
            "vision_parameters": vision, "vocab": len(processor.tokenizer),
            "image_tokens": (args.image_size // args.patch_size) ** 2}


# ---- workers (each in its own process) -----------------------------------------------------------

def load_vlm(path: str, spec: Dict[str, Any]):
    """The Llava saved at ``path``, vision tower frozen, in the spec's dtype and attention, on its device."""
    from transformers import AutoModelForImageTextToText

    from ..models import DTYPES

    model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True, dtype=DTYPES[spec["dtype"]],
                                                        attn_implementation=spec["attn"])
    model.config.use_cache = False
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name)
    return model.to(spec["device"])


def _tokenized(spec: Dict[str, Any], processor) -> List[list]:
    from ..data.vision import parse_vision_record, tokenize_vision_examples

    out = []
    for b, rows in enumerate(spec["batches"]):
        examples = [parse_vision_record(f"batch {b} record {i}", r, "pairs", spec["data_dir"])[0]
                    for i, r in enumerate(rows)]
        out.append(tokenize_vision_examples(examples, processor, max_length=spec["max_length"])[0])
    return out


def dpokit_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch
    from transformers import AutoProcessor

    from ..data.vision import collate_vision
    from ..losses import build_loss
    from ..reference import ModelReference
    from ..scoring.vlm import VisionLogProbEngine

    device = spec["device"]
    processor = AutoProcessor.from_pretrained(spec["dirs"]["policy"])
    tokenized = _tokenized(spec, processor)
    batches = [collate_vision(batch) for batch in tokenized]
    loss_fn = build_loss({"name": "dpo", "beta": spec["beta"]})
    gc.collect()
    memory = PeakMemory(device)
    policy = load_vlm(spec["dirs"]["policy"], spec)
    policy.train()
    reference = ModelReference(load_vlm(spec["dirs"]["reference"], spec))
    engine = VisionLogProbEngine(loss_fn.needs, processor.tokenizer.pad_token_id, spec["layout"], spec["chunk_size"])
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    result = timed_steps(batches, lambda batch: loss_fn(engine.loss_inputs(policy, batch, reference)).loss.mean(),
                         params, optimizer, spec, memory)
    ids = [[ex.prompt_ids + c for c in ex.completions] for batch in tokenized for ex in batch]
    return {**result, "token_ids": ids, "images_per_step": int(batches[0].pixel_values.shape[0])}


def trl_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import shutil
    import tempfile

    import trl
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor

    device = spec["device"]
    processor = AutoProcessor.from_pretrained(spec["dirs"]["policy"])

    def with_images(row):
        images = []
        for path in row["images"]:
            with Image.open(os.path.join(spec["data_dir"], path)) as image:
                images.append(image.convert("RGB"))
        return dict(row, images=images)

    batches = [[with_images(r) for r in rows] for rows in spec["batches"]]
    workdir = tempfile.mkdtemp(prefix="dpokit-bench-trl-vlm-")
    gc.collect()
    memory = PeakMemory(device)
    policy = load_vlm(spec["dirs"]["policy"], spec)
    reference = load_vlm(spec["dirs"]["reference"], spec)
    trainer, model, params = trl_trainer(spec, policy, reference, workdir, len(batches[0]),
                                         Dataset.from_list(batches[0]), processor, device)
    now = step_clock(spec)
    times, losses, ids = [], [], []
    images = None
    for rows in batches:
        inputs = trainer.data_collator([dict(r) for r in rows])
        images = int(inputs["pixel_values"].shape[0])
        n = len(rows)
        for i in range(n):  # rows i (chosen) and n + i (rejected) of TRL's batch
            ids.append([inputs["input_ids"][j][inputs["attention_mask"][j].bool()].tolist() for j in (i, n + i)])
        seconds, loss = timed_trl_step(trainer, model, params, inputs, device, now)
        times.append(seconds)
        losses.append(loss)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"times": times, "losses": losses, "peak_bytes": memory.peak_bytes(), "memory_method": memory.method,
            "token_ids": ids, "images_per_step": images, "trl_version": trl.__version__,
            "optimizer": type(trainer.optimizer).__name__}


WORKERS = {"dpokit": dpokit_worker, "trl": trl_worker}


def run_worker(path: str) -> int:
    from .workers import run_spec_worker

    return run_spec_worker(path, WORKERS)


def spawn(spec: Dict[str, Any], workdir: str, label: str) -> Dict[str, Any]:
    """Run ``spec`` in a fresh ``python -m dpokit.bench.vlm --worker SPEC`` process; its result."""
    from .workers import spawn_module

    return spawn_module("dpokit.bench.vlm", spec, workdir, label)


# ---- the run -------------------------------------------------------------------------------------

def summarise(result: Dict[str, Any], warmup: int) -> Dict[str, Any]:
    measured = slice(warmup, None)
    seconds = sum(result["times"][measured])
    rows = result["token_ids"]
    per_step = len(rows) // len(result["times"])
    pairs = per_step * len(result["times"][measured])
    tokens = sum(len(r) for pair in rows[warmup * per_step:] for r in pair)
    return {"pairs_per_s": pairs / seconds, "tokens_per_s": tokens / seconds,
            "peak_memory_mb": result["peak_bytes"] / 2 ** 20, "step_seconds": result["times"],
            "losses": result["losses"], "memory_method": result["memory_method"],
            "images_per_step": result["images_per_step"],
            **{k: result[k] for k in ("trl_version", "optimizer") if k in result}}


def run(args, workdir: str) -> int:
    """The VLM benchmark (module docstring) for the parsed ``dpokit bench`` arguments."""
    import torch

    from ..scoring.lm.layouts import LAYOUTS
    from .workers import quiet

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    clock = "wall" if device.startswith("cuda") else args.clock
    text_default = "padded,packed,prompt_shared"
    layouts = list(VLM_LAYOUTS) if args.layouts == text_default else \
        [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {unknown}; choose from {sorted(LAYOUTS)}")
    if args.reference != "model":
        raise SystemExit("--modality vlm: --reference model only (a reference cache is not defined for VLM data)")
    compare = args.compare == "trl"
    if compare:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("--compare trl needs TRL: pip install 'dpokit[bench]'")
    quiet()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"preparing images, processor and tiny Llava in {workdir} ...")
    prepared = prepare(args, workdir)
    attn = resolve_attention(args.attn, "padded", device, args.dtype)  # image models: sdpa unless asked
    base = {"device": device, "dtype": args.dtype, "attn": attn, "batches": prepared["batches"],
            "data_dir": prepared["data_dir"], "dirs": prepared["dirs"], "beta": args.beta, "lr": args.lr,
            "chunk_size": args.chunk_size, "max_length": args.max_length, "threads": args.threads, "clock": clock}
    configs = [(layout, dict(base, kind="dpokit", layout=layout)) for layout in layouts]
    if compare:
        configs.append(("trl", dict(base, kind="trl")))
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _ in configs}
    raw_ids: Dict[str, Any] = {}
    loads = []
    for repeat in range(max(1, args.repeats)):
        for label, spec in configs:
            log(f"measuring {label} (run {repeat + 1}/{max(1, args.repeats)}) ...")
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
            raw = spawn(dict(spec), workdir, f"{label}-{repeat}")
            raw_ids[label] = raw["token_ids"]
            runs[label].append(summarise(raw, args.warmup))
    results = fastest(runs)
    trl_result = results.pop("trl", None)
    prompt_tokens = [len(p[0]) for p in raw_ids[layouts[0]]]
    report: Dict[str, Any] = {
        "modality": "vlm",
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": cpu_name(),
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "torch": torch.__version__, "load_average_at_start_of_runs": loads},
        "setup": {"model": "tiny Llava (CLIP tower, projector, Llama)", "batch_size": args.batch_size,
                  "steps": args.steps, "warmup": args.warmup, "hidden_size": args.hidden_size, "layers": args.layers,
                  "heads": args.heads, "vision_hidden": args.vision_hidden, "vision_layers": args.vision_layers,
                  "image_size": args.image_size, "patch_size": args.patch_size,
                  "image_tokens_per_image": prepared["image_tokens"], "vocab_size": prepared["vocab"],
                  "parameters": prepared["parameters"], "vision_parameters_frozen": prepared["vision_parameters"],
                  "mean_row_tokens": sum(prompt_tokens) / len(prompt_tokens), "dtype": args.dtype,
                  "attn": attn, "max_length": args.max_length, "repeats": max(1, args.repeats), "clock": clock},
        "layouts": results,
    }
    if trl_result is not None:
        report["trl"] = trl_result
        report["ratios"] = ratios(results, trl_result)
        report["first_step_loss"] = {"trl": trl_result["losses"][0],
                                     **{label: r["losses"][0] for label, r in results.items()}}
        report["same_token_ids_as_trl"] = {label: raw_ids[label] == raw_ids["trl"] for label in results}
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def format_report(report: Dict[str, Any]) -> str:
    m, s = report["machine"], report["setup"]
    where = m["gpu"] or f"{m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    lines = [
        f"dpokit bench --modality vlm on {m['device']} ({where}), torch {m['torch']}",
        f"model: {s['model']}: Llama {s['layers']} x {s['hidden_size']}, vision {s['vision_layers']} x "
        f"{s['vision_hidden']} (frozen), {s['parameters'] / 1e6:.2f}M parameters, {s['dtype']}, attention {s['attn']}",
        f"data: {s['image_size']}px images, {s['image_tokens_per_image']} image tokens each, rows of "
        f"{s['mean_row_tokens']:.0f} tokens on average (prompt + completion); batch {s['batch_size']} pairs, "
        f"{s['steps']} measured steps after {s['warmup']} warm-up; {s['clock']} clock, fastest of {s['repeats']} run(s)",
        "",
    ]
    rows = list(report["layouts"].items()) + ([("TRL DPOTrainer", report["trl"])] if "trl" in report else [])
    header = f"{'configuration':<18}{'pairs/s':>9}{'tokens/s':>10}{'peak MB':>9}{'images':>8}{'loss@1':>12}{'loss@2':>12}"
    if "ratios" in report:
        header += f"{'x TRL speed':>13}{'x TRL mem':>11}{'same ids':>10}"
    lines += [header, "-" * len(header)]
    for label, r in rows:
        losses = r["losses"] + [float("nan")] * 2
        line = (f"{label:<18}{r['pairs_per_s']:>9.2f}{r['tokens_per_s']:>10.0f}{r['peak_memory_mb']:>9.0f}"
                f"{r['images_per_step']:>8}{losses[0]:>12.8f}{losses[1]:>12.8f}")
        ratio = report.get("ratios", {}).get(label)
        if ratio:
            line += f"{ratio['pairs_per_s']:>12.2f}x{ratio['peak_memory']:>10.2f}x" \
                    f"{str(report['same_token_ids_as_trl'][label]):>10}"
        lines.append(line)
    first = next(iter(report["layouts"].values()))
    lines.append(f"peak memory: {first['memory_method']}, above the process before the models were loaded; "
                 "images: images encoded per step (policy pass)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(run_worker(sys.argv[2]))
    raise SystemExit("usage: dpokit bench --modality vlm [options]")
