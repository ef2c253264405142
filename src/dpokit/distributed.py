"""Multi-process training and generation: what every process must agree on.

dpokit runs on one process or on many through ``accelerate`` (DDP, FSDP/FSDP2, DeepSpeed ZeRO);
this module holds the pieces the trainer and the online rounds share. Every helper works
unchanged on one process (no ``torch.distributed`` group: it returns its input).

Work splitting (generation, judging, reference caches)
    :func:`shard_bounds` / :func:`shard_for_rank` give process ``r`` of ``W`` the contiguous slice
    ``[n*r//W, n*(r+1)//W)`` of a list; :func:`gather_objects` concatenates every process's list in
    rank order, so ``gather_objects(shard_for_rank(items))`` restores ``items``' order exactly.
    :func:`item_seed` / :func:`item_generator` derive a random stream from ``(seed, global index)``
    only, so a sampled completion does not depend on which process drew it or how many there are;
    :func:`map_sharded` puts the three together.

Global batches
    With ``W`` processes ``train.batch_size`` is per process: the data order is cut into global
    batches of ``W * batch_size`` examples (the same batches one process with ``batch_size * W``
    would see, in the same order) and process ``r`` takes slice ``r`` of each (:func:`epoch_plan`).
    A global batch smaller than ``W`` (a tail of an epoch) is left out, since some process would
    have nothing to run.

Reductions
    :func:`reduce_weighted` sums ``(value * weight, weight)`` pairs over processes (the union of
    the keys, so a metric one process lacks still reduces) and returns weighted means.

Forward passes through the engine's wrapper
    The log-prob engine runs the model's backbone and its LM head separately (to project only
    completion positions, in chunks). DDP, FSDP and DeepSpeed do their bookkeeping in the
    wrapped model's ``forward`` (DDP prepares the gradient all-reduce there, FSDP gathers the
    root's shards, ZeRO-3 fetches partitioned weights). :func:`forward_through` runs the engine's
    computation *as* the wrapped model's forward: it installs it as the inner module's ``forward``
    for one call of the wrapper, so every hook fires as for an ordinary forward.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

logger = logging.getLogger("dpokit")

T = TypeVar("T")

__all__ = [
    "is_distributed", "world_size", "rank", "is_main_process", "barrier", "end_process_group",
    "shard_bounds", "shard_for_rank", "gather_objects", "broadcast_object", "item_seed", "item_generator",
    "map_sharded", "reduce_weighted", "all_reduce_sum", "EpochPlan", "epoch_plan", "forward_through",
    "link_wrapper", "engine_kind", "zero_stage", "shards_parameters", "cpu_only", "check_launch",
    "fill_deepspeed_auto", "register_external_parameters", "prepare_frozen", "resolve_mixed_precision",
]


# ---- process group ------------------------------------------------------------------------------

def is_distributed() -> bool:
    """True when a ``torch.distributed`` group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def end_process_group() -> None:
    """Destroy the process group (at the end of a command; trainers leave it up for the next)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:  # every process is done with the group before any tears it down
            dist.barrier()
        dist.destroy_process_group()


def _rank_world(rank_: Optional[int], world: Optional[int]) -> Tuple[int, int]:
    return (rank() if rank_ is None else rank_), (world_size() if world is None else world)


# ---- splitting and gathering work ---------------------------------------------------------------

def shard_bounds(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> Tuple[int, int]:
    """``[lo, hi)`` of process ``rank_``'s contiguous share of ``n`` items: sizes differ by at most
    one, and with ``n = W * b`` process ``r`` gets exactly ``[r*b, (r+1)*b)``."""
    r, w = _rank_world(rank_, world)
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is outside a world of {w} processes")
    return n * r // w, n * (r + 1) // w


def shard_for_rank(items: Sequence[T], rank_: Optional[int] = None, world: Optional[int] = None) -> List[T]:
    """This process's contiguous slice of ``items`` (see :func:`shard_bounds`)."""
    lo, hi = shard_bounds(len(items), rank_, world)
    return list(items[lo:hi])


def gather_objects(local: Sequence[T]) -> List[T]:
    """Concatenate every process's list (any picklable items) in rank order; every process gets
    the whole list. On one process, ``list(local)``."""
    if not is_distributed():
        return list(local)
    parts: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(local))
    return [item for part in parts for item in part]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Process ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed that depends only on ``(seed, index)``: per-item randomness that is the same
    whichever process handles the item and however many processes there are."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def item_generator(seed: int, index: int, device: Any = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`item_seed` (on ``device``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(item_seed(seed, index))
    return generator


def map_sharded(fn: Callable[[List[T], List[int]], List[Any]], items: Sequence[T]) -> List[Any]:
    """Run ``fn(local_items, global_indices)`` on this process's share of ``items`` and return every
    result, in ``items``' order, on every process. ``fn`` must return one result per item; seed any
    sampling with ``item_generator(seed, global_index)`` so the gathered list matches a one-process
    run. With FSDP or ZeRO-3 the model's forward is collective: every process must run the same
    number of forwards (e.g. ``generate(..., synced_gpus=True)``), which the contiguous split keeps
    to within one batch; see ``docs/distributed.md``."""
    lo, hi = shard_bounds(len(items))
    local = list(items[lo:hi])
    results = list(fn(local, list(range(lo, hi))))
    if len(results) != len(local):
        raise ValueError(f"map_sharded: fn returned {len(results)} results for {len(local)} items")
    return gather_objects(results)


# ---- reductions ---------------------------------------------------------------------------------

def all_reduce_sum(values: Sequence[float], device: Any = "cpu") -> List[float]:
    """Element-wise sum over processes of a list of floats (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def reduce_weighted(sums: Dict[str, float], weights: Dict[str, float], device: Any = "cpu") -> Dict[str, float]:
    """``{key: sum over processes of sums[key] / sum over processes of weights[key]}``.

    ``sums[key]`` is this process's weighted total (``value * weight`` summed), ``weights[key]`` its
    weight. Keys are the union over processes: a key a process does not have contributes nothing
    there. A key with zero total weight is left out.
    """
    keys = sorted(sums)
    if is_distributed():
        keys = sorted(set().union(*[set(k) for k in gather_objects([tuple(keys)])]))
    flat = [sums.get(k, 0.0) for k in keys] + [weights.get(k, 0.0) for k in keys]
    flat = all_reduce_sum(flat, device)
    n = len(keys)
    return {k: flat[i] / flat[n + i] for i, k in enumerate(keys) if flat[n + i] != 0}


# ---- the data order across processes ------------------------------------------------------------

class EpochPlan:
    """One epoch's global batches (lists of dataset positions) and where each starts in the
    epoch's sample order (``starts[i]``; ``end`` after the last), for resuming by sample position."""

    def __init__(self, batches: List[List[int]], starts: List[int], end: int, dropped: int = 0,
                 source: Optional[List[int]] = None):
        self.batches = batches
        self.starts = starts
        self.end = end
        self.dropped = dropped  # examples in global batches too small to split
        self.source = source if source is not None else list(range(len(batches)))  # index in the order's list

    def __len__(self) -> int:
        return len(self.batches)

    def micro_after(self, n: int) -> int:
        """How many of this plan's batches come from the order's first ``n`` batches (e.g. the plan
        position where a curriculum stage that ends at order batch ``n`` ends)."""
        return sum(1 for i in self.source if i < n)

    def samples_before(self, micro: int) -> int:
        """Position in the epoch's sample order of global batch ``micro`` (``end`` past the last)."""
        return self.starts[micro] if micro < len(self.starts) else self.end


def epoch_plan(batches: List[List[int]], world: int, start: int = 0, global_batch: Optional[int] = None) -> EpochPlan:
    """Global batches for one epoch from the order's batches (already of ``global_batch`` examples).

    ``start > 0`` continues an epoch from sample ``start`` of its order (a resume under another
    global batch size): the remaining samples are re-cut into batches of ``global_batch``.
    Batches with fewer than ``world`` examples are dropped (some process would have none).
    """
    if start:
        flat = [i for batch in batches for i in batch]
        size = global_batch or max((len(b) for b in batches), default=1)
        batches = [flat[i:i + size] for i in range(start, len(flat), size)]
    kept, starts, source, position, dropped = [], [], [], start, 0
    for i, batch in enumerate(batches):
        if len(batch) >= world:
            kept.append(batch)
            starts.append(position)
            source.append(i)
        else:
            dropped += len(batch)
        position += len(batch)
    return EpochPlan(kept, starts, position, dropped, source)


# ---- forward passes through DDP / FSDP / DeepSpeed ----------------------------------------------

_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "DeepSpeedEngine")


def _is_fsdp2(module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        return False
    return isinstance(module, FSDPModule)


def _wrapper_of(model) -> Tuple[Optional[torch.nn.Module], Optional[torch.nn.Module]]:
    """``(module to call, module whose forward it runs)`` or ``(None, None)`` for a bare model."""
    if type(model).__name__ == "OptimizedModule":  # torch.compile: call what it wraps
        model = model._orig_mod
    if type(model).__name__ in _WRAPPERS:
        return model, model.module
    linked = model.__dict__.get("_dpokit_wrapper")
    wrapper = linked() if linked is not None else None
    if wrapper is not None:
        return _wrapper_of(wrapper)
    if _is_fsdp2(model):
        return model, model
    return None, None


def link_wrapper(inner: torch.nn.Module, wrapper: torch.nn.Module) -> None:
    """Remember that ``inner`` runs inside ``wrapper`` (e.g. a LoRA policy used with adapters off
    as its own reference), so :func:`forward_through` on ``inner`` goes through ``wrapper``."""
    if inner is not wrapper:
        inner.__dict__["_dpokit_wrapper"] = weakref.ref(wrapper)


def forward_through(model, fn: Callable[[], T]) -> T:
    """Return ``fn()``, computed as the forward of ``model``'s DDP/FSDP/DeepSpeed wrapper.

    ``fn``'s result should be tensors in tuples/lists/dicts, which the wrappers' hooks
    traverse. A bare model (one process, or an unwrapped frozen reference) just calls ``fn``.
    """
    wrapper, inner = _wrapper_of(model)
    if wrapper is None or inner.__dict__.get("_dpokit_in_forward", False):
        return fn()
    missing = object()
    previous = inner.__dict__.get("forward", missing)

    def forward(*args, **kwargs):
        return fn()

    inner.__dict__["forward"] = forward
    inner.__dict__["_dpokit_in_forward"] = True
    try:
        return wrapper()
    finally:
        inner.__dict__["_dpokit_in_forward"] = False
        if previous is missing:
            del inner.__dict__["forward"]
        else:
            inner.__dict__["forward"] = previous


# ---- engines --------------------------------------------------------------------------------------

def engine_kind(accelerator) -> str:
    """``single`` | ``ddp`` | ``fsdp`` | ``fsdp2`` | ``deepspeed`` (any ZeRO stage)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    if kind == DistributedType.FSDP:
        return "fsdp2" if getattr(accelerator, "is_fsdp2", False) else "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(getattr(plugin, "zero_stage", 0) or 0) if plugin is not None else 0


def shards_parameters(accelerator) -> bool:
    """True when no process holds whole weights (FSDP, ZeRO-3)."""
    kind = engine_kind(accelerator)
    return kind in ("fsdp", "fsdp2") or (kind == "deepspeed" and zero_stage(accelerator) == 3)


def cpu_only() -> bool:
    """No GPU/XPU/NPU/MPS: ``Accelerator(cpu=True)``, which is what turns ``torchrun`` on a CPU
    machine into a gloo process group (without it every process would train alone)."""
    try:
        return not torch.accelerator.is_available()
    except AttributeError:  # torch < 2.6
        return not torch.cuda.is_available()


def check_launch(accelerator) -> None:
    """Refuse to run when the launcher started several processes but they do not form a group
    (each would train its own copy and write the same run directory)."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"WORLD_SIZE={launched} but accelerate formed a group of {accelerator.num_processes} process(es) "
            f"({accelerator.distributed_type}); launch with `accelerate launch` or `torchrun` on a machine whose "
            "devices accelerate detects, or set ACCELERATE_USE_CPU=true for CPU processes"
        )


def fill_deepspeed_auto(accelerator, batch_size: int, max_grad_norm: Optional[float]) -> None:
    """Give DeepSpeed the values it cannot infer without a prepared DataLoader: the per-process
    micro-batch, and gradient clipping from ``train.max_grad_norm``. dpokit accumulates gradients
    itself (``train.grad_accum``) and tells DeepSpeed where each window ends, so DeepSpeed's own
    accumulation stays 1."""
    if engine_kind(accelerator) != "deepspeed":
        return
    plugin = accelerator.state.deepspeed_plugin
    cfg = plugin.deepspeed_config
    if cfg.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        cfg["train_micro_batch_size_per_gpu"] = batch_size
    if cfg.get("gradient_clipping", "auto") == "auto":
        cfg["gradient_clipping"] = float(max_grad_norm or 0.0)
    gas = cfg.get("gradient_accumulation_steps", "auto")
    if gas not in ("auto", 1):
        raise ValueError(f"DeepSpeed config gradient_accumulation_steps={gas}: set it to 1 or \"auto\" and use "
                         "train.grad_accum instead")
    cfg["gradient_accumulation_steps"] = 1
    zero = cfg.get("zero_optimization") or {}
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save", "auto") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # final/ holds the whole weights


def register_external_parameters(accelerator, wrapped, params) -> None:
    """ZeRO-3 gathers a module's partitioned weights when that module is called; a scorer that reads
    a weight directly (the LM scorer's chunked projection reads the LM head's) names it here, and it
    is registered as an external parameter of the module whose forward runs the scorer."""
    if not (engine_kind(accelerator) == "deepspeed" and zero_stage(accelerator) == 3):
        return
    import deepspeed

    _, inner = _wrapper_of(wrapped)
    for param in params:
        deepspeed.zero.register_external_parameter(inner, param)


def prepare_frozen(accelerator, model: torch.nn.Module,
                   external_parameters: Optional[Callable[[Any], Sequence]] = None) -> torch.nn.Module:
    """Place a frozen model (the reference) for the engine in use, in eval mode.

    * one process, DDP, ZeRO-0/1/2: moved to the device, not wrapped (no gradients to reduce);
    * FSDP: wrapped with the run's FSDP settings (sharded, gathered layer by layer in forward);
    * FSDP2: ``fully_shard`` through accelerate's FSDP2 preparation;
    * ZeRO-3: a DeepSpeed inference engine with the run's ZeRO-3 settings and no optimizer.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    kind = engine_kind(accelerator)
    if kind == "fsdp2":
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        model = fsdp2_prepare_model(accelerator, model)
    elif kind == "fsdp":
        model = _fsdp1_wrap(accelerator, model)
    elif kind == "deepspeed" and zero_stage(accelerator) == 3:
        model = _zero3_inference_engine(accelerator, model)
        if external_parameters is not None:  # what the scorer reads directly (the LM head)
            register_external_parameters(accelerator, model, external_parameters(model))
    else:
        model = model.to(accelerator.device)
    model.eval()
    return model


def _fsdp1_wrap(accelerator, model):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)
    return FSDP(
        model,
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=True,
        limit_all_gathers=plugin.limit_all_gathers,
        sync_module_states=plugin.sync_module_states,
        param_init_fn=plugin.param_init_fn,
        device_id=torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device,
    )


def _zero3_inference_engine(accelerator, model):
    import deepspeed

    cfg = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        cfg.pop(key, None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    zero = cfg.setdefault("zero_optimization", {})
    zero["stage"] = 3
    zero.pop("offload_optimizer", None)
    if hidden:
        for key, value in (("reduce_bucket_size", hidden * hidden),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                           ("stage3_param_persistence_threshold", 10 * hidden)):
            if zero.get(key) == "auto":
                zero[key] = value
    cfg["train_micro_batch_size_per_gpu"] = cfg.get("train_micro_batch_size_per_gpu", 1)
    if cfg["train_micro_batch_size_per_gpu"] == "auto":
        cfg["train_micro_batch_size_per_gpu"] = 1
    cfg["gradient_accumulation_steps"] = 1
    cfg.pop("train_batch_size", None)
    cfg.pop("gradient_clipping", None)
    _drop_auto(cfg)
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    return engine


def _drop_auto(cfg: Dict[str, Any]) -> None:
    for key in [k for k, v in cfg.items() if v == "auto"]:
        del cfg[key]
    for value in cfg.values():
        if isinstance(value, dict):
            _drop_auto(value)


# ---- the machine ---------------------------------------------------------------------------

def _has_gpu() -> bool:
    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mps"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        try:
            if backend is not None and backend.is_available():
                return True
        except Exception:  # a backend stub without a working runtime
            pass
    return False


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 where the GPU has it, else fp16 (with loss scaling), none on CPU. An explicit
    ``fp16`` without a GPU is an error: fp16 loss scaling runs only on GPUs, and fp16 without it
    underflows; this is checked when the trainer starts, before any model loads."""
    if setting == "fp16" and not _has_gpu():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (its loss scaling runs only there) and none "
                          "is available; use bf16, no, or auto (which picks for the machine)")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
