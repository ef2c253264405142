"""``dpokit bench``: how fast and how lean is one DPO training step?

A tiny Llama-architecture model (size configurable; random weights, seeded) with a byte-level BPE
tokenizer trained on the benchmark data (``--data PATH``, or by default pairs generated from the
seed in HH-RLHF's dialogue shape: :mod:`dpokit.bench.data`), and a fixed sequence of batches.
Every configuration runs the same batches from the same weights, each in its own fresh process
(so peak memory is that configuration's own):

* one dpokit step per batch: engine (layout) -> DPO loss -> backward -> clip -> AdamW step;
* ``--reference cached`` (or ``both``): the same step reading precomputed reference log-probs
  (:class:`dpokit.reference.CachedReference`, built once beforehand and not timed);
* ``--compare trl``: Hugging Face TRL's ``DPOTrainer.training_step`` (sigmoid loss, same beta,
  learning rate, clipping, batch size and ``max_length``) on the same token ids, then the same
  optimizer step. The policy and the reference start from different weights, so the first-step
  loss is not trivially log 2, and both libraries must report the same value.

Reported per configuration (``--json``: one JSON object with the same fields):

``pairs_per_s``     preference pairs (groups) per second of step time, after ``--warmup`` steps
                    (wall clock; ``--clock cpu``: the process's CPU time, for shared machines).
``tokens_per_s``    real tokens per second, counting every row as ``prompt + completion`` as the
                    data defines it (padding excluded, a shared prompt counted once per row), so the
                    ratio between configurations is the same as for pairs.
``peak_memory_mb``  peak memory of the step above the process's memory before any model was
                    loaded, i.e. weights, gradients, optimizer state and activations
                    (:class:`dpokit.bench.measure.PeakMemory`).
``flops_fraction``  model FLOP/s divided by the measured fp32 (or ``--dtype``) matmul peak of
                    the device (best of several square matmuls). Model FLOPs per step count the
                    work the batch needs, the same for every configuration
                    (:func:`dpokit.bench.measure.model_flops`): ``6 N`` per trained token plus
                    ``2 N`` per reference token, tokens counted once (a shared prompt once per
                    group), plus causal attention; redundant work (padding, repeated prompts)
                    earns nothing.
``flops_fraction_head_where_needed``  the same with the LM head counted only on the positions
                    that predict a completion token (DPO needs no vocabulary projection of the
                    prompt), a stricter count for small models whose LM head is a large share of N.

The package: :mod:`~dpokit.bench.data` (data, tokenizer, batches, weights),
:mod:`~dpokit.bench.measure` (memory, clocks, matmul peak, FLOPs), :mod:`~dpokit.bench.workers`
(the measured steps, one process each), :mod:`~dpokit.bench.report` (rates, ratios, the table).
See ``docs/performance.md`` for results and their interpretation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from ..kernels import resolve_attention
from ..tiny import ARCHITECTURES
from .data import GENERATED_PAIRS, prepare
from .measure import matmul_peak_flops, model_flops
from .report import cpu_name, fastest, format_report, ratios, summarise
from .workers import build_reference_cache, quiet, run_worker, spawn

__all__ = ["add_arguments", "run", "main", "format_report", "model_flops"]

DEFAULT_LAYOUTS = ("padded", "packed", "prompt_shared")


# the benchmarks of the other modalities: a module each with add_arguments(parser) and run(args, workdir)
_MODALITY_HELP = {
    "vlm": "a tiny Llava on image + text pairs (dpokit.bench.vlm)",
    "diffusion": "a tiny UNet on image pairs against the official Diffusion-DPO step (dpokit.bench.diffusion)",
    "steps": "MCTS-DPO search speed, shared-prefix KV cache vs naive re-encoding (dpokit.bench.steps)",
}


def _modality_benches() -> dict:
    from . import diffusion, steps, vlm

    return {"vlm": vlm, "diffusion": diffusion, "steps": steps}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", choices=("text", *_MODALITY_HELP), default="text",
                        help="text: a tiny Llama on text pairs (default); "
                             + "; ".join(f"{name}: {text}" for name, text in _MODALITY_HELP.items()))
    parser.add_argument("--data", default=None, metavar="PATH",
                        help=f"preference pairs (JSONL or any format dpokit reads); default: {GENERATED_PAIRS} "
                             "HH-style dialogue pairs generated from --seed")
    parser.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                        help="comma-separated batch layouts to measure (default: all)")
    parser.add_argument("--reference", choices=("model", "cached", "both"), default="model",
                        help="reference log-probs from a reference model each step (as TRL's default), from the "
                             "precomputed cache, or both")
    parser.add_argument("--compare", choices=("trl",), default=None, help="also run TRL's DPOTrainer step")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--max-length", type=int, default=512, help="prompt + completion tokens (default 512)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first steps (default 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, interleaved, and keep each one's fastest "
                             "run (for machines shared with other work; default 1)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default 4 x hidden size")
    parser.add_argument("--kv-heads", type=int, default=None,
                        help="key/value heads (grouped-query attention; default: one per attention head)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="llama",
                        help="model architecture: llama (no biases) or qwen2 (q/k/v biases); default llama")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary trained on the data")
    parser.add_argument("--model-vocab", type=int, default=None, metavar="N",
                        help="the model's vocabulary (embedding and LM head rows), at least the tokenizer's: real "
                             "models pad theirs (Qwen2: 151936); default: the tokenizer's")
    parser.add_argument("--sequence-length", type=int, default=None, metavar="L",
                        help="make every pair exactly L tokens per row (a long prompt cut from the data's token "
                             "stream, completions of --completion-length); default: the data's own lengths")
    parser.add_argument("--completion-length", type=int, default=None, help="with --sequence-length (default L/8)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="address-space limit of each measured worker process (RLIMIT_AS); a worker that "
                             "exceeds it is reported as out of memory instead of straining the machine")
    parser.add_argument("--chunk-size", type=int, default=1024, help="vocabulary projection chunk (positions)")
    parser.add_argument("--projection", choices=("chunked", "liger"), default="chunked",
                        help="dpokit's vocabulary projection (train.projection): chunked, or liger (Liger-Kernel's "
                             "fused linear cross-entropy on CUDA; falls back to chunked elsewhere)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--attn", default="auto",
                        help="attention implementation: auto (per layout: flash_attention_2 for packed, "
                             "flex_attention for prompt_shared on a CUDA GPU that has them, sdpa otherwise; "
                             "see dpokit.kernels), sdpa, eager, flex_attention, flash_attention_2")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for dpokit and TRL alike")
    parser.add_argument("--compile", action="store_true", help="dpokit: compile the decoder layers")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="step time: wall clock (default), or the process's CPU time, which other work on a "
                             "shared machine inflates much less (use with --threads 1; CPU only)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    for bench in _modality_benches().values():
        bench.add_arguments(parser)


def run(args) -> int:
    """Run the benchmark the parsed ``args`` describe (or, with ``--worker``, one worker)."""
    if getattr(args, "worker", None):
        return run_worker(args.worker)
    import shutil

    import logging

    import torch

    workdir = tempfile.mkdtemp(prefix="dpokit-bench-")
    threads, level = torch.get_num_threads(), logging.getLogger("dpokit").level
    try:
        return _run(args, workdir)
    finally:  # run in-process (the CLI, a test), the benchmark leaves threads and logging as it found them
        shutil.rmtree(workdir, ignore_errors=True)
        torch.set_num_threads(threads)
        logging.getLogger("dpokit").setLevel(level)


def _run(args, workdir: str) -> int:
    import torch

    bench = _modality_benches().get(getattr(args, "modality", "text"))
    if bench is not None:  # a non-text modality's benchmark runs on its own
        return bench.run(args, workdir)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = "wall" if device.startswith("cuda") else args.clock
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    from ..scoring.lm.layouts import LAYOUTS

    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {unknown}; choose from {sorted(LAYOUTS)}")
    if args.compare == "trl":
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("--compare trl needs TRL: pip install 'dpokit[bench]'")
    quiet()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"preparing data, tokenizer and models in {workdir} ...")
    prepared = prepare(args, workdir)
    batches = prepared["batches"]
    peak = matmul_peak_flops(device, args.dtype, clock=clock)
    log(f"matmul peak ({args.dtype}, {device}): {peak / 1e9:.1f} GFLOP/s")
    max_length = max(args.max_length, args.sequence_length or 0)
    base_spec = {"device": device, "dtype": args.dtype, "attn": args.attn, "batches": batches, "dirs": prepared["dirs"],
                 "pad_id": prepared["pad_id"], "beta": args.beta, "lr": args.lr, "chunk_size": args.chunk_size,
                 "projection": args.projection,
                 "max_length": max_length, "memory_limit_gb": args.memory_limit_gb, "gradient_checkpointing": args.gradient_checkpointing,
                 "compile": args.compile, "threads": args.threads, "cache_path": None, "clock": clock}
    plain = [[(p, c) for _, p, c in b] for b in batches]
    flops = {(ref, needed): model_flops(plain, prepared["params"], args.layers, args.hidden_size, ref,
                                        prepared["head_params"], needed)
             for ref in (True, False) for needed in (True, False)}
    cache_info = None
    modes = {"model": [False], "cached": [True], "both": [False, True]}[args.reference]
    if True in modes:
        cache_info = build_reference_cache(args, prepared, workdir, device)
        log(f"reference cache built in {cache_info['seconds']:.1f} s ({cache_info['examples']} examples, untimed)")
    configs = []  # (label, spec, whether a reference model runs in the step)
    for cached in modes:
        for layout in layouts:
            spec = dict(base_spec, kind="dpokit", layout=layout, cache_path=cache_info["path"] if cached else None,
                        attn=resolve_attention(args.attn, layout, device, args.dtype))
            configs.append((layout + ("+cached_ref" if cached else ""), spec, not cached))
    if args.compare == "trl":
        configs.append(("trl", dict(base_spec, kind="trl", attn=resolve_attention(args.attn, "padded", device,
                                                                                  args.dtype)), True))
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in configs}
    failures: Dict[str, Dict[str, Any]] = {}
    loads = []
    for repeat in range(max(1, args.repeats)):
        for label, spec, live_reference in configs:
            if label in failures:
                continue  # it failed (out of memory): it would again
            log(f"measuring {label} (run {repeat + 1}/{max(1, args.repeats)}) ...")
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
            raw = spawn(dict(spec), workdir, f"{label}-{repeat}")
            if "failed" in raw:
                log(f"  {label}: {raw['failed']}")
                failures[label] = raw
                continue
            runs[label].append(summarise(raw, batches, args.warmup, flops[live_reference, False], peak,
                                         flops[live_reference, True]))
    results = fastest({label: measured for label, measured in runs.items() if measured})
    for label, spec, _ in configs:  # the kernel each configuration ran with (--attn auto picks per layout)
        if label in results:
            results[label]["attn"] = spec["attn"]
    trl_result = results.pop("trl", None)

    report: Dict[str, Any] = {
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": prepared["torch_threads"],
                    "platform": platform.platform(), "processor": cpu_name(),
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "torch": torch.__version__,
                    "load_average_at_start_of_runs": loads},
        "setup": {"data": prepared["source"], "batch_size": args.batch_size, "max_length": max_length,
                  "steps": args.steps, "warmup": args.warmup, "hidden_size": args.hidden_size, "layers": args.layers,
                  "heads": args.heads, "kv_heads": args.kv_heads or args.heads, "arch": args.arch,
                  "vocab_size": prepared["vocab"], "model_vocab": prepared["model_vocab"],
                  "sequence_length": args.sequence_length,
                  "completion_length": (args.completion_length or max(1, args.sequence_length // 8))
                  if args.sequence_length else None, "memory_limit_gb": args.memory_limit_gb, "parameters": prepared["total_params"],
                  "matmul_parameters": prepared["params"], "dtype": args.dtype, "attn": args.attn,
                  "chunk_size": args.chunk_size, "projection": args.projection, "gradient_checkpointing": args.gradient_checkpointing,
                  "compile": args.compile, "reference": args.reference, "repeats": max(1, args.repeats),
                  "clock": clock},
        "matmul_peak_flops": peak,
        "layouts": results,
    }
    if cache_info:
        report["reference_cache"] = {"build_seconds": cache_info["seconds"], "examples": cache_info["examples"]}
    if failures:
        report["failed"] = failures
    if trl_result is not None:
        report["trl"] = trl_result
        report["ratios"] = ratios(results, trl_result)
        report["first_step_loss"] = {"trl": trl_result["losses"][0],
                                     **{label: r["losses"][0] for label, r in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    # Running out of memory is a result; any other failure of a worker is an error.
    return 1 if any(not f.get("out_of_memory") for f in failures.values()) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dpokit.bench``: the same as ``dpokit bench``."""
    from ..data.formats import DataError

    parser = argparse.ArgumentParser(prog="dpokit bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (DataError, FileNotFoundError) as err:
        print(f"dpokit bench: error: {err}", file=sys.stderr)
        return 2

