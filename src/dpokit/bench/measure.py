"""What the benchmark measures with: peak memory, step clocks, the matmul peak and model FLOPs.

Peak memory is taken above a baseline read before any model is loaded. CUDA:
``torch.cuda.max_memory_allocated``. CPU (Linux): the kernel's resident-set high-water mark
``VmHWM``, reset through ``/proc/self/clear_refs`` at the baseline; elsewhere ``ru_maxrss`` of the
fresh worker process.

Model FLOPs per step count the work the batch needs: ``6 N`` per trained token plus ``2 N`` per
reference token (N = parameters in matmuls: all but the input embedding), tokens counted once (a
shared prompt once per group), plus causal attention ``4 * layers * width * context`` per token
forward (x3 trained, x1 reference). Every configuration is credited the same model FLOPs for the
same batch; redundant work (padding, repeated prompts) earns nothing.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union


class PeakMemory:
    """Peak memory of ``device`` above a baseline taken at construction."""

    def __init__(self, device: str):
        import torch

        self.device = device
        self.method = "cuda.max_memory_allocated"
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = rss_bytes()
        if reset_hwm():
            self.method = "VmHWM (Linux clear_refs)"
        else:
            self.method = "ru_maxrss of a fresh process"

    def peak_bytes(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        hwm = proc_status("VmHWM")
        if hwm is None:
            hwm = _maxrss_bytes()
        return hwm - self.base


def proc_status(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` in bytes (``VmRSS``, ``VmHWM``); None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.M)
        return int(match.group(1)) * 1024 if match else None
    except OSError:
        return None


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_bytes() -> int:
    """The process's resident set now (``ru_maxrss`` where ``/proc`` is missing)."""
    rss = proc_status("VmRSS")
    return rss if rss is not None else _maxrss_bytes()


def reset_hwm() -> bool:
    """Reset the kernel's ``VmHWM`` to the current resident set; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return proc_status("VmHWM") is not None
    except OSError:
        return False


def step_clock(spec_or_name: Union[str, Mapping[str, Any]]) -> Callable[[], float]:
    """The step clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``),
    named directly or by the ``clock`` entry of a worker spec."""
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.get("clock", "wall")
    return time.process_time if name == "cpu" else time.perf_counter


def sync(device: str) -> None:
    """Wait for queued device work (CUDA), so that a clock read after it covers that work."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(batches: Sequence[Any], loss_of: Callable[[Any], Any], params: Sequence[Any], optimizer,
                spec: Mapping[str, Any], memory) -> dict:
    """Each batch's whole step, timed with the spec's clock: ``loss_of(batch)`` -> backward -> clip
    the gradient norm at 1.0 -> optimizer step. The worker's result: times, losses and peak memory."""
    import torch

    device = spec["device"]
    now = step_clock(spec)
    times, losses = [], []
    for batch in batches:
        sync(device)
        start = now()
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        sync(device)
        times.append(now() - start)
    return {"times": times, "losses": losses, "peak_bytes": memory.peak_bytes(), "memory_method": memory.method}


def matmul_peak_flops(device: str, dtype_name: str = "float32", size: Optional[int] = None, repeats: int = 5,
                      clock: str = "wall") -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device`` (2 n^3 FLOPs each), timed by the
    ``clock`` of :func:`step_clock`."""
    now = step_clock(clock)
    import torch

    dtype = getattr(torch, dtype_name)
    n = size or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = now()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, now() - start)
    return 2 * n ** 3 / best


def model_flops(batches: Sequence[Sequence[tuple]], params: int, layers: int, width: int,
                with_reference: bool, head_params: int = 0, head_where_needed: bool = False) -> List[float]:
    """Model FLOPs of each step (see the module docstring).

    ``batches``: per step, the groups ``(prompt_ids, [completion_ids, ...])``. ``params``: matmul
    parameters N. ``head_where_needed``: count the LM head (``head_params`` of the ``params``) only
    on positions that predict a completion token, the ones DPO needs, instead of on every token.
    """
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
