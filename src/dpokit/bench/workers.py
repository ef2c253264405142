"""The measured steps, each configuration in its own fresh process (so its peak memory is its own).

* :func:`dpokit_worker`: engine (layout) -> DPO loss -> backward -> clip -> AdamW step, with the
  reference model live or its log-probs read from a :class:`dpokit.reference.CachedReference`;
* :func:`trl_worker`: TRL's ``DPOTrainer.training_step`` (sigmoid loss, same beta, learning rate,
  clipping, batch size and ``max_length``) on the same token ids, then the same optimizer step.

:func:`spawn` writes a worker spec (JSON) and runs ``python -m dpokit.bench --worker SPEC``, which
calls :func:`run_worker` and writes the result next to the spec.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

from ..kernels import resolve_attention
from .measure import PeakMemory, step_clock, sync, timed_steps


def quiet() -> None:
    """Silence dpokit's and transformers' logging and progress bars (they would pollute the report)."""
    import logging

    logging.getLogger("dpokit").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def load_model(path: str, spec: Dict[str, Any]):
    """The causal LM saved at ``path``, in the spec's dtype and attention, on its device."""
    from transformers import AutoModelForCausalLM

    from ..models import DTYPES

    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=DTYPES[spec["dtype"]],
                                                 attn_implementation=spec["attn"])
    model.config.use_cache = False
    return model.to(spec["device"])


def build_reference_cache(args, prepared: Dict[str, Any], workdir: str, device: str) -> Dict[str, Any]:
    """Reference log-probs of every benchmark example, computed once (the time is reported apart)."""
    import torch

    from ..data.tokenize import TokenizedExample
    from ..losses import get_loss
    from ..reference import CachedReference, ModelReference
    from ..scoring.lm.engine import LogProbEngine

    attn = resolve_attention(args.attn, "prompt_shared", device, args.dtype)  # the layout the cache is built with
    reference = load_model(prepared["dirs"]["reference"], {"dtype": args.dtype, "attn": attn, "device": device})
    engine = LogProbEngine(get_loss("dpo", beta=args.beta).needs, prepared["pad_id"], "prompt_shared", args.chunk_size)
    examples = [TokenizedExample(i, p, c) for batch in prepared["batches"] for i, p, c in batch]
    start = time.perf_counter()
    with torch.no_grad():
        cached = CachedReference.build(ModelReference(reference), engine, examples, os.path.join(workdir, "cache"),
                                       args.batch_size)
    return {"path": cached.path, "seconds": time.perf_counter() - start, "examples": len(examples)}


def dpokit_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Step times, losses and peak memory of dpokit's step for the spec's layout and reference."""
    import torch

    from ..data import collate
    from ..data.tokenize import TokenizedExample
    from ..losses import build_loss
    from ..reference import CachedReference, ModelReference, load_store
    from ..scoring.lm.engine import LogProbEngine

    device = spec["device"]
    batches = [collate([TokenizedExample(i, p, c) for i, p, c in batch]) for batch in spec["batches"]]
    loss_fn = build_loss({"name": "dpo", "beta": spec["beta"]})
    gc.collect()
    memory = PeakMemory(device)
    policy = load_model(spec["dirs"]["policy"], spec)
    if spec["gradient_checkpointing"]:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    if spec["cache_path"]:
        reference = CachedReference(load_store(spec["cache_path"]), spec["cache_path"], hit=True).to(device)
    else:
        reference = ModelReference(load_model(spec["dirs"]["reference"], spec))
    if spec["compile"]:
        policy = torch.compile(policy)  # the engine compiles the decoder layers in place (regional)
    engine = LogProbEngine(loss_fn.needs, spec["pad_id"], spec["layout"], spec["chunk_size"],
                           spec.get("projection", "chunked"))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    # the whole step: engine -> loss -> backward -> clip -> AdamW
    return timed_steps(batches, lambda batch: loss_fn(engine.loss_inputs(policy, batch, reference)).loss.mean(),
                       params, optimizer, spec, memory)


def trl_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The same for TRL's ``DPOTrainer.training_step`` plus the same optimizer step."""
    import shutil

    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    device = spec["device"]
    tokenizer = AutoTokenizer.from_pretrained(spec["dirs"]["policy"])
    placeholder = Dataset.from_list([{"prompt": "Hello", "chosen": " yes", "rejected": " no"}] * 2)
    examples = [[{"prompt_ids": p, "chosen_ids": c[0], "rejected_ids": c[1]} for _, p, c in batch]
                for batch in spec["batches"]]
    workdir = tempfile.mkdtemp(prefix="dpokit-bench-trl-")
    gc.collect()
    memory = PeakMemory(device)
    policy = load_model(spec["dirs"]["policy"], spec)
    reference = load_model(spec["dirs"]["reference"], spec)
    trainer, model, params = trl_trainer(spec, policy, reference, workdir, len(examples[0]), placeholder, tokenizer,
                                         device, gradient_checkpointing=spec["gradient_checkpointing"])
    now = step_clock(spec)
    times, losses = [], []
    for batch in examples:
        seconds, loss = timed_trl_step(trainer, model, params, trainer.data_collator(batch), device, now)
        times.append(seconds)
        losses.append(loss)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"times": times, "losses": losses, "peak_bytes": memory.peak_bytes(), "memory_method": memory.method,
            "trl_version": trl.__version__, "optimizer": type(trainer.optimizer).__name__}


def trl_trainer(spec, policy, reference, workdir, batch_size, dataset, processing_class, device, **options):
    """TRL's ``DPOTrainer`` set up as the bench compares it: sigmoid loss, the spec's beta, learning rate and
    ``max_length``, constant schedule, clipping 1.0, fp32, an optimizer created; ``(trainer, model, params)``
    (``options``: further ``DPOConfig`` fields)."""
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=workdir, per_device_train_batch_size=batch_size, max_length=spec["max_length"],
        beta=spec["beta"], loss_type=["sigmoid"], learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=not device.startswith("cuda"), dataloader_num_workers=0,
        seed=0, disable_tqdm=True, **options,
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=dataset,
                         processing_class=processing_class)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    return trainer, model, [p for p in model.parameters() if p.requires_grad]


def timed_trl_step(trainer, model, params, inputs, device, now):
    """One TRL ``training_step`` with the same clipping and optimizer step as dpokit's: ``(seconds, loss)``."""
    import torch

    sync(device)
    start = now()
    loss = trainer.training_step(model, inputs)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = float(loss)
    sync(device)
    return now() - start, loss


def memory_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Allocate and touch ``spec["bytes"]`` bytes with torch: checks what a worker may allocate
    under ``memory_limit_gb`` (and how a worker that cannot is reported)."""
    import torch

    memory = PeakMemory("cpu")
    block = torch.ones(int(spec["bytes"]), dtype=torch.uint8)
    result = {"times": [], "losses": [], "peak_bytes": memory.peak_bytes(), "memory_method": memory.method,
              "allocated": block.numel()}
    del block
    return result


WORKERS = {"dpokit": dpokit_worker, "trl": trl_worker, "memory": memory_worker}


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "std::bad_alloc")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed (CPU or CUDA), rather than anything else."""
    return isinstance(error, MemoryError) or any(text in str(error).lower() for text in OUT_OF_MEMORY)


def run_worker(path: str) -> int:
    """Run the worker the spec at ``path`` names (``kind``) and write its result to ``spec["result"]``.

    A worker that runs out of memory writes ``{"failed": ..., "out_of_memory": true}`` and exits 3."""
    quiet()
    with open(path) as handle:
        spec = json.load(handle)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    try:
        result = WORKERS[spec["kind"]](spec)
    except Exception as error:  # noqa: BLE001 (MemoryError included; anything else is re-raised)
        if not is_out_of_memory(error):
            raise
        result = {"failed": f"out of memory: {type(error).__name__}: {str(error).splitlines()[0][:300]}",
                  "out_of_memory": True}
        with open(spec["result"], "w") as handle:
            json.dump(result, handle)
        return 3
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
    return 0


def _limit_memory(gigabytes: float):
    """A ``preexec_fn`` that caps the child's address space (RLIMIT_AS) at ``gigabytes``."""
    def apply() -> None:
        import resource

        limit = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def failure(returncode: int, stderr: str, label: str) -> Dict[str, Any]:
    """The result of a worker that exited with ``returncode`` without writing one."""
    if returncode < 0:
        import signal

        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == getattr(signal, "SIGKILL", 9):  # what the Linux out-of-memory killer sends
            return {"failed": f"killed by {name} (on Linux, the out-of-memory killer)", "out_of_memory": True,
                    "signal": -returncode}
        return {"failed": f"killed by {name}", "out_of_memory": False, "signal": -returncode}
    oom = any(text in stderr.lower() for text in OUT_OF_MEMORY)
    return {"failed": f"worker {label!r} exited with status {returncode}" + (" (out of memory)" if oom else ""),
            "out_of_memory": oom, "stderr": stderr[-4000:]}


def spawn(spec: Dict[str, Any], workdir: str, label: str) -> Dict[str, Any]:
    """Run ``spec`` in a fresh Python process and return its result, or, where the process ran out
    of memory, was killed or failed, ``{"failed": reason, "out_of_memory": bool, ...}``."""
    spec_path = os.path.join(workdir, f"spec-{label}.json")
    spec["result"] = os.path.join(workdir, f"result-{label}.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    limit = spec.get("memory_limit_gb")
    proc = subprocess.run([sys.executable, "-m", "dpokit.bench", "--worker", spec_path], env=env,
                          capture_output=True, text=True, preexec_fn=_limit_memory(limit) if limit else None)
    if os.path.exists(spec["result"]):
        with open(spec["result"]) as handle:
            result = json.load(handle)
        if proc.returncode == 0 or "failed" in result:
            return result
    return failure(proc.returncode, proc.stderr, label)


def run_spec_worker(path: str, workers: Dict[str, Any]) -> int:
    """A modality benchmark's worker process: read the spec at ``path``, run ``workers[spec["kind"]]``,
    write its result where the spec says."""
    quiet()
    with open(path) as handle:
        spec = json.load(handle)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = workers[spec["kind"]](spec)
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)
    return 0


def spawn_module(module: str, spec: Dict[str, Any], workdir: str, label: str) -> Dict[str, Any]:
    """Run ``spec`` in a fresh ``python -m MODULE --worker SPEC`` process; its result."""
    name = module.rsplit(".", 1)[-1]
    spec_path = os.path.join(workdir, f"spec-{name}-{label}.json")
    spec["result"] = os.path.join(workdir, f"result-{name}-{label}.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", module, "--worker", spec_path], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {label!r} failed:\n{proc.stderr[-4000:]}")
    with open(spec["result"]) as handle:
        return json.load(handle)
