"""An optional fused vocabulary projection: Liger-Kernel's fused linear cross-entropy.

``train.projection: liger`` (default ``chunked``) computes the per-token log-probs of the
selected completion positions with ``liger_kernel.transformers.functional.
liger_fused_linear_cross_entropy(..., reduction="none")``: its Triton kernel fuses the
``hidden @ W.T`` chunk, the softmax and the gradient of the logits, so the ``[chunk, vocab]``
block is never written out in fp32 as :class:`~dpokit.scoring.lm.projection.ChunkedProjection`
does. Per-token log-prob = minus the per-token cross-entropy; the per-sequence sums the losses
need (policy and reference alike) are then taken by the engine exactly as for the chunked path.
With ``reduction="none"`` liger-kernel 0.8.5 recomputes the logits gradient in backward with
the per-token upstream gradient folded in (earlier versions did not support it), so the
gradients are exact; the weight gradient accumulates in fp32 (``accum_dtype``).

It covers what the kernel can express; everything else uses the chunked projection (the same
values, checked in ``tests/scoring/lm/test_fused.py``), with one warning naming the reason:

* no CUDA tensors (the kernels are Triton), liger-kernel missing or older than 0.8.5;
* per-vocabulary statistics (``entropy``, ``sum_p2``, ``ref_kl``): the kernel returns the loss only;
* logit transforms other than Gemma-2's soft-capping (Granite/Cohere scaling).

Off by default: whether it pays over the chunked projection on a GPU has not been measured yet.
Install with ``pip install 'dpokit[gpu]'``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from typing import Optional, Tuple

import torch

logger = logging.getLogger(__name__)

PROJECTIONS = ("chunked", "liger")
_MIN_VERSION = (0, 8, 5)
_WARNED: set = set()


def _version(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def liger_installed() -> Tuple[bool, str]:
    try:
        version = importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        return False, "liger-kernel is not installed (pip install 'dpokit[gpu]')"
    if _version(version) < _MIN_VERSION:
        return False, (f"liger-kernel {version} is older than 0.8.5 (per-token gradients with "
                       "reduction='none')")
    return True, ""


def _softcap_only(transform) -> Tuple[bool, Optional[float]]:
    """``(expressible, softcap)``: the identity, or soft-capping alone."""
    if transform is None or getattr(transform, "is_identity", False):
        return True, None
    if getattr(transform, "softcap_only", False):
        return True, float(transform.softcap)
    return False, None


def liger_usable(hidden: torch.Tensor, stats, transform) -> Tuple[bool, str]:
    """Can the Liger kernel compute these log-probs? ``(ok, reason it cannot)``."""
    if stats:
        return False, f"token statistics {sorted(stats)} need the chunked projection"
    if not _softcap_only(transform)[0]:
        return False, "the model's logit scaling is not expressible in the Liger kernel"
    if hidden.device.type != "cuda":
        return False, f"Liger's Triton kernels run on CUDA only (tensors are on {hidden.device.type})"
    return liger_installed()


def liger_logps(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, transform=None) -> torch.Tensor:
    """Per-token ``log p(target)`` [N] in fp32 by Liger's fused linear cross-entropy."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    _, softcap = _softcap_only(transform)
    nll = liger_fused_linear_cross_entropy(hidden, lm_head.weight, targets, getattr(lm_head, "bias", None),
                                           reduction="none", softcap=softcap, accum_dtype=torch.float32)
    return -nll.float()


def warn_fallback(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        message = f"train.projection 'liger' is not used here ({reason}); using the chunked projection"
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
