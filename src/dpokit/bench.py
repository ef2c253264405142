"""``dpokit bench``: how fast and how lean is one DPO training step?

A tiny Llama-architecture model (size configurable; random weights, seeded) with a byte-level BPE
tokenizer trained on the benchmark data, the HH-RLHF sample (``../shared/data/`` relative to the
repository root; generated pairs with long shared prompts when the file is absent), and a fixed
sequence of batches. Every configuration runs the same batches from the same weights, each in
its own fresh process (so peak memory is that configuration's own):

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
                    loaded, i.e. weights, gradients, optimizer state and activations. CUDA:
                    ``torch.cuda.max_memory_allocated``. CPU (Linux): the kernel's resident-set
                    high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs`` at the
                    baseline; elsewhere ``ru_maxrss`` of the fresh worker process.
``flops_fraction``  model FLOP/s divided by the measured fp32 (or ``--dtype``) matmul peak of
                    the device (best of several square matmuls). Model FLOPs per step count the
                    work the batch needs: ``6 N`` per trained token plus ``2 N`` per reference
                    token (N = parameters in matmuls: all but the input embedding), tokens counted
                    once (a shared prompt once per group), plus causal attention
                    ``4 * layers * width * context`` per token forward (x3 trained, x1 reference).
                    Every configuration is credited the same model FLOPs for the same batch;
                    redundant work (padding, repeated prompts) earns nothing.
``flops_fraction_head_where_needed``  the same with the LM head counted only on the positions
                    that predict a completion token (DPO needs no vocabulary projection of the
                    prompt), a stricter count for small models whose LM head is a large share of N.

See ``docs/performance.md`` for results and their interpretation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_LAYOUTS = ("padded", "packed", "prompt_shared")
DATA_RELATIVE = os.path.join("..", "shared", "data", "hh-rlhf-harmless-1600.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help=f"preference pairs (JSONL); default {DATA_RELATIVE} relative to the repository root, "
                             "generated pairs when it is absent")
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
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary trained on the data")
    parser.add_argument("--chunk-size", type=int, default=1024, help="vocabulary projection chunk (positions)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2...)")
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


# ---- measurement helpers (used in the workers) --------------------------------------------------

class PeakMemory:
    """Peak memory above a baseline taken at construction (see the module docstring)."""

    def __init__(self, device: str):
        import torch

        self.device = device
        self.method = "cuda.max_memory_allocated"
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = _rss_bytes()
        if _reset_hwm():
            self.method = "VmHWM (Linux clear_refs)"
        else:
            self.method = "ru_maxrss of a fresh process"

    def peak_bytes(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        hwm = _proc_status("VmHWM")
        if hwm is None:
            scale = 1 if sys.platform == "darwin" else 1024
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return hwm - self.base


def _proc_status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M)
        return int(match.group(1)) * 1024 if match else None
    except OSError:
        return None


def _rss_bytes() -> int:
    rss = _proc_status("VmRSS")
    if rss is not None:
        return rss
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _proc_status("VmHWM") is not None
    except OSError:
        return False


def _clock(spec_or_name) -> "callable":
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.get("clock", "wall")
    return time.process_time if name == "cpu" else time.perf_counter


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_flops(device: str, dtype_name: str = "float32", size: Optional[int] = None, repeats: int = 5,
                      clock: str = "wall") -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device`` (2 n^3 FLOPs each)."""
    now = _clock(clock)
    import torch

    dtype = getattr(torch, dtype_name)
    n = size or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = now()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, now() - start)
    return 2 * n ** 3 / best


# ---- FLOPs -------------------------------------------------------------------------------------

def model_flops(batches: Sequence[Sequence[tuple]], params: int, layers: int, width: int,
                with_reference: bool, head_params: int = 0, head_where_needed: bool = False) -> List[float]:
    """Model FLOPs of each step (see the module docstring). ``head_where_needed``: count the LM
    head (``head_params`` of the ``params``) only on positions that predict a completion token,
    the ones DPO needs, instead of on every token."""
    out = []
    for groups in batches:
        tokens = 0
        predicted = 0
        context = 0  # sum over tokens of the number of positions each attends to
        for prompt, completions in groups:
            p = len(prompt)
            tokens += p + sum(len(c) for c in completions)
            predicted += sum(len(c) for c in completions)
            context += p * (p + 1) // 2
            context += sum(len(c) * p + len(c) * (len(c) + 1) // 2 for c in completions)
        attention = 4 * layers * width * context  # QK^T and AV, forward
        per_token = 2 * params * tokens
        if head_where_needed:
            per_token = 2 * (params - head_params) * tokens + 2 * head_params * predicted
        flops = 3 * per_token + 3 * attention
        if with_reference:
            flops += per_token + attention
        out.append(float(flops))
    return out


# ---- data and model -----------------------------------------------------------------------------

def _repo_root() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(os.path.dirname(here))


def _generated_pairs(n: int, seed: int) -> List[Dict[str, str]]:
    words = ("the a cat dog house river plan idea answer question light dark small large quick slow "
             "help explain please because when where why how good bad safe unsafe always never").split()
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    rows = []
    for _ in range(n):
        turns = "".join(f"\n\nHuman: {text(8, 40)}\n\nAssistant: {text(8, 60)}" for _ in range(rng.randint(1, 3)))
        prompt = turns + f"\n\nHuman: {text(5, 30)}\n\nAssistant:"
        rows.append({"chosen": prompt + " " + text(5, 60), "rejected": prompt + " " + text(5, 60)})
    return rows


def load_benchmark_data(path: Optional[str], seed: int):
    from .data import load_examples

    if path is None:
        candidate = os.path.join(_repo_root(), DATA_RELATIVE)
        if not os.path.exists(candidate):
            candidate = os.path.join(os.getcwd(), DATA_RELATIVE)
        path = candidate if os.path.exists(candidate) else None
    if path is not None:
        return load_examples(path), os.path.normpath(path)
    from datasets import Dataset

    generated = Dataset.from_list(_generated_pairs(1600, seed))
    return load_examples(generated), "generated (1600 pairs, long shared prompts)"


def prepare(args, workdir: str) -> Dict[str, Any]:
    """Tokenizer, tokenized batches, policy and reference weights saved under ``workdir``."""
    import torch

    from .data import tokenize_examples
    from .tiny import tiny_llama, train_tokenizer

    examples, source = load_benchmark_data(args.data, args.seed)
    texts = []
    for ex in examples:
        texts.extend(x for x in (ex.prompt, ex.chosen, ex.rejected) if isinstance(x, str))
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    tokenized, _ = tokenize_examples(examples, tokenizer, max_length=args.max_length)
    needed = (args.warmup + args.steps) * args.batch_size
    if len(tokenized) < needed:
        raise ValueError(f"{len(tokenized)} usable pairs, the benchmark needs {needed}")
    rng = random.Random(args.seed)
    chosen = rng.sample(tokenized, needed)
    batches = [[[ex.index, ex.prompt_ids, ex.completions] for ex in chosen[i:i + args.batch_size]]
               for i in range(0, needed, args.batch_size)]
    sizes = dict(vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_layers=args.layers,
                 num_heads=args.heads, intermediate_size=args.intermediate_size,
                 max_position_embeddings=max(args.max_length, 512), tokenizer=tokenizer)
    policy = tiny_llama(seed=args.seed, **sizes)
    reference = tiny_llama(seed=args.seed + 1, **sizes)  # a different reference: the first loss is not log 2
    dirs = {}
    for name, model in (("policy", policy), ("reference", reference)):
        dirs[name] = os.path.join(workdir, name)
        model.save_pretrained(dirs[name], safe_serialization=True)
        tokenizer.save_pretrained(dirs[name])
    embedding = policy.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in policy.parameters()) - embedding
    head_params = sum(p.numel() for p in policy.get_output_embeddings().parameters())
    del policy, reference
    gc.collect()
    return {"source": source, "batches": batches, "dirs": dirs, "pad_id": tokenizer.pad_token_id,
            "params": params, "head_params": head_params, "total_params": params + embedding, "vocab": len(tokenizer),
            "width": args.hidden_size, "torch_threads": torch.get_num_threads()}


def build_reference_cache(args, prepared, workdir: str, device: str) -> Dict[str, Any]:
    """Reference log-probs of every benchmark example, computed once (the time is reported apart)."""
    import torch

    from .data.tokenize import TokenizedExample
    from .scoring.lm.engine import LogProbEngine
    from .losses import get_loss
    from .models import DTYPES
    from .reference import CachedReference, ModelReference
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(prepared["dirs"]["reference"], use_safetensors=True,
                                                     dtype=DTYPES[args.dtype], attn_implementation=args.attn).to(device)
    engine = LogProbEngine(get_loss("dpo", beta=args.beta).needs, prepared["pad_id"], "prompt_shared", args.chunk_size)
    examples = [TokenizedExample(i, p, c) for batch in prepared["batches"] for i, p, c in batch]
    start = time.perf_counter()
    with torch.no_grad():
        cached = CachedReference.build(ModelReference(reference), engine, examples, os.path.join(workdir, "cache"),
                                       args.batch_size)
    return {"path": cached.path, "seconds": time.perf_counter() - start, "examples": len(examples)}


# ---- workers ------------------------------------------------------------------------------------

def _load_model(path: str, spec: Dict[str, Any]):
    from transformers import AutoModelForCausalLM

    from .models import DTYPES

    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=DTYPES[spec["dtype"]],
                                                 attn_implementation=spec["attn"])
    model.config.use_cache = False
    return model.to(spec["device"])


def _dpokit_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from .config import build_loss
    from .data import collate
    from .data.tokenize import TokenizedExample
    from .scoring.lm.engine import LogProbEngine
    from .reference import CachedReference, ModelReference, _load_store

    device = spec["device"]
    batches = [collate([TokenizedExample(i, p, c) for i, p, c in batch]) for batch in spec["batches"]]
    loss_fn = build_loss({"name": "dpo", "beta": spec["beta"]})
    gc.collect()
    memory = PeakMemory(device)
    policy = _load_model(spec["dirs"]["policy"], spec)
    if spec["gradient_checkpointing"]:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    if spec["cache_path"]:
        reference = CachedReference(_load_store(spec["cache_path"]), spec["cache_path"], hit=True).to(device)
    else:
        reference = ModelReference(_load_model(spec["dirs"]["reference"], spec))
    if spec["compile"]:
        policy = torch.compile(policy)  # the engine compiles the decoder layers in place (regional)
    engine = LogProbEngine(loss_fn.needs, spec["pad_id"], spec["layout"], spec["chunk_size"])
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    now = _clock(spec)
    times, losses = [], []
    for batch in batches:
        _sync(device)
        start = now()
        out = loss_fn(engine.loss_inputs(policy, batch, reference))
        loss = out.loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        _sync(device)
        times.append(now() - start)
    return {"times": times, "losses": losses, "peak_bytes": memory.peak_bytes(), "memory_method": memory.method}


def _trl_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    device = spec["device"]
    tokenizer = AutoTokenizer.from_pretrained(spec["dirs"]["policy"])
    placeholder = Dataset.from_list([{"prompt": "Hello", "chosen": " yes", "rejected": " no"}] * 2)
    examples = [[{"prompt_ids": p, "chosen_ids": c[0], "rejected_ids": c[1]} for _, p, c in batch]
                for batch in spec["batches"]]
    workdir = tempfile.mkdtemp(prefix="dpokit-bench-trl-")
    gc.collect()
    memory = PeakMemory(device)
    policy = _load_model(spec["dirs"]["policy"], spec)
    reference = _load_model(spec["dirs"]["reference"], spec)
    config = DPOConfig(
        output_dir=workdir, per_device_train_batch_size=len(examples[0]), max_length=spec["max_length"],
        beta=spec["beta"], loss_type=["sigmoid"], learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, gradient_checkpointing=spec["gradient_checkpointing"],
        bf16=False, fp16=False, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=not device.startswith("cuda"), dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=placeholder,
                         processing_class=tokenizer)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    now = _clock(spec)
    times, losses = [], []
    for batch in examples:
        inputs = trainer.data_collator(batch)
        _sync(device)
        start = now()
        loss = trainer.training_step(model, inputs)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        _sync(device)
        times.append(now() - start)
    import shutil

    import trl

    shutil.rmtree(workdir, ignore_errors=True)
    return {"times": times, "losses": losses, "peak_bytes": memory.peak_bytes(), "memory_method": memory.method,
            "trl_version": trl.__version__, "optimizer": type(trainer.optimizer).__name__}


def _quiet() -> None:
    import logging

    logging.getLogger("dpokit").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _run_worker(path: str) -> int:
    _quiet()
    with open(path) as handle:
        spec = json.load(handle)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = _trl_worker(spec) if spec["kind"] == "trl" else _dpokit_worker(spec)
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
    return 0


def _spawn(spec: Dict[str, Any], workdir: str, label: str) -> Dict[str, Any]:
    spec_path = os.path.join(workdir, f"spec-{label}.json")
    spec["result"] = os.path.join(workdir, f"result-{label}.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "dpokit.bench", "--worker", spec_path], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {label!r} failed:\n{proc.stderr[-4000:]}")
    with open(spec["result"]) as handle:
        return json.load(handle)


# ---- the command --------------------------------------------------------------------------------

def _summarise(result: Dict[str, Any], batches, warmup: int, flops: List[float], peak_flops: float,
               needed_flops: List[float]) -> Dict[str, Any]:
    measured = slice(warmup, None)
    seconds = sum(result["times"][measured])
    pairs = sum(len(b) for b in batches[measured])
    tokens = sum(len(p) + len(c) for b in batches[measured] for _, p, cs in b for c in cs)
    achieved = sum(flops[measured]) / seconds
    return {
        "pairs_per_s": pairs / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_memory_mb": result["peak_bytes"] / 2 ** 20,
        "flops_fraction": achieved / peak_flops,
        "achieved_flops": achieved,
        "flops_fraction_head_where_needed": sum(needed_flops[measured]) / seconds / peak_flops,
        "step_seconds": result["times"],
        "losses": result["losses"],
        "memory_method": result["memory_method"],
        **{k: result[k] for k in ("trl_version", "optimizer") if k in result},
    }


def run(args) -> int:
    if getattr(args, "worker", None):
        return _run_worker(args.worker)
    import shutil

    workdir = tempfile.mkdtemp(prefix="dpokit-bench-")
    try:
        return _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args, workdir: str) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = "wall" if device.startswith("cuda") else args.clock
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    from .scoring.lm.layouts import LAYOUTS

    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {unknown}; choose from {sorted(LAYOUTS)}")
    if args.compare == "trl":
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("--compare trl needs TRL: pip install 'dpokit[bench]'")
    _quiet()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"preparing data, tokenizer and models in {workdir} ...")
    prepared = prepare(args, workdir)
    batches = prepared["batches"]
    peak = matmul_peak_flops(device, args.dtype, clock=clock)
    log(f"matmul peak ({args.dtype}, {device}): {peak / 1e9:.1f} GFLOP/s")
    base_spec = {"device": device, "dtype": args.dtype, "attn": args.attn, "batches": batches, "dirs": prepared["dirs"],
                 "pad_id": prepared["pad_id"], "beta": args.beta, "lr": args.lr, "chunk_size": args.chunk_size,
                 "max_length": args.max_length, "gradient_checkpointing": args.gradient_checkpointing,
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
    configs = []  # (label, spec, flops per step)
    for cached in modes:
        for layout in layouts:
            spec = dict(base_spec, kind="dpokit", layout=layout, cache_path=cache_info["path"] if cached else None)
            configs.append((layout + ("+cached_ref" if cached else ""), spec, not cached))
    if args.compare == "trl":
        configs.append(("trl", dict(base_spec, kind="trl"), True))
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in configs}
    loads = []
    for repeat in range(max(1, args.repeats)):
        for label, spec, live_reference in configs:
            log(f"measuring {label} (run {repeat + 1}/{max(1, args.repeats)}) ...")
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
            raw = _spawn(dict(spec), workdir, f"{label}-{repeat}")
            runs[label].append(_summarise(raw, batches, args.warmup, flops[live_reference, False], peak,
                                          flops[live_reference, True]))
    best = {}
    for label, measured in runs.items():
        fastest = max(measured, key=lambda r: r["pairs_per_s"])
        best[label] = dict(fastest, pairs_per_s_runs=[r["pairs_per_s"] for r in measured],
                           peak_memory_mb_runs=[r["peak_memory_mb"] for r in measured])
    trl_result = best.pop("trl", None)
    results = best

    report: Dict[str, Any] = {
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": prepared["torch_threads"],
                    "platform": platform.platform(), "processor": _cpu_name(),
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "torch": torch.__version__,
                    "load_average_at_start_of_runs": loads},
        "setup": {"data": prepared["source"], "batch_size": args.batch_size, "max_length": args.max_length,
                  "steps": args.steps, "warmup": args.warmup, "hidden_size": args.hidden_size, "layers": args.layers,
                  "heads": args.heads, "vocab_size": prepared["vocab"], "parameters": prepared["total_params"],
                  "matmul_parameters": prepared["params"], "dtype": args.dtype, "attn": args.attn,
                  "chunk_size": args.chunk_size, "gradient_checkpointing": args.gradient_checkpointing,
                  "compile": args.compile, "reference": args.reference, "repeats": max(1, args.repeats),
                  "clock": clock},
        "matmul_peak_flops": peak,
        "layouts": results,
    }
    if cache_info:
        report["reference_cache"] = {"build_seconds": cache_info["seconds"], "examples": cache_info["examples"]}
    if trl_result is not None:
        report["trl"] = trl_result
        report["ratios"] = {
            label: {"pairs_per_s": r["pairs_per_s"] / trl_result["pairs_per_s"],
                    "peak_memory": r["peak_memory_mb"] / trl_result["peak_memory_mb"],
                    "first_step_loss_difference": r["losses"][0] - trl_result["losses"][0]}
            for label, r in results.items()
        }
        report["first_step_loss"] = {"trl": trl_result["losses"][0],
                                     **{label: r["losses"][0] for label, r in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            match = re.search(r"^model name\s*:\s*(.+)$", handle.read(), re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_report(report: Dict[str, Any]) -> str:
    m, s = report["machine"], report["setup"]
    where = m["gpu"] or f"{m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    lines = [
        f"dpokit bench on {m['device']} ({where}), torch {m['torch']}",
        f"data: {s['data']}; batch {s['batch_size']} pairs, max length {s['max_length']}, "
        f"{s['steps']} measured steps after {s['warmup']} warm-up",
        f"model: Llama {s['layers']} layers x {s['hidden_size']}, vocab {s['vocab_size']}, "
        f"{s['parameters'] / 1e6:.2f}M parameters, {s['dtype']}, attention {s['attn']}",
        f"matmul peak: {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({s['dtype']}); step time: {s['clock']} clock, "
        f"fastest of {s['repeats']} run(s)",
        "",
    ]
    rows = [(label, r) for label, r in report["layouts"].items()]
    if "trl" in report:
        rows.append(("TRL DPOTrainer", report["trl"]))
    header = f"{'configuration':<26}{'pairs/s':>9}{'tokens/s':>10}{'peak MB':>9}{'GFLOP/s':>9}{'% peak':>8}" \
             f"{'% peak*':>9}{'loss@1':>10}{'loss@2':>10}"
    if "ratios" in report:
        header += f"{'x TRL speed':>13}{'x TRL mem':>11}"
    lines += [header, "-" * len(header)]
    for label, r in rows:
        losses = r["losses"] + [float("nan")] * 2
        line = (f"{label:<26}{r['pairs_per_s']:>9.2f}{r['tokens_per_s']:>10.0f}{r['peak_memory_mb']:>9.0f}"
                f"{r['achieved_flops'] / 1e9:>9.1f}{100 * r['flops_fraction']:>7.1f}%"
                f"{100 * r['flops_fraction_head_where_needed']:>8.1f}%{losses[0]:>10.5f}{losses[1]:>10.5f}")
        ratio = report.get("ratios", {}).get(label)
        if ratio:
            line += f"{ratio['pairs_per_s']:>12.2f}x{ratio['peak_memory']:>10.2f}x"
        lines.append(line)
    if "reference_cache" in report:
        c = report["reference_cache"]
        lines.append(f"\nreference cache: built once in {c['build_seconds']:.1f} s for {c['examples']} examples "
                     "(not in the step times)")
    first = next(iter(report["layouts"].values()))
    lines.append(f"peak memory: {first['memory_method']}, above the process before the models were loaded")
    lines.append("% peak: model FLOP/s (6N per trained token, 2N per reference token, attention included) over "
                 "the matmul peak; % peak*: the same with the LM head counted only where DPO needs it")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dpokit bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
