"""Which attention kernel a batch layout gets: ``model.attn_implementation: auto``.

=================  ==========================================  ==================================
layout             on CUDA (compute capability 8.0 or newer)   otherwise (CPU, MPS, older GPUs)
=================  ==========================================  ==================================
``packed``         ``flash_attention_2`` when ``flash_attn`` is  ``sdpa``
                   installed and the model dtype is bf16/fp16
                   (one row, variable-length from position
                   ids), else ``sdpa``
``prompt_shared``  ``flex_attention`` when torch has            ``sdpa`` (a dense boolean mask)
                   FlexAttention and ``triton`` is installed
                   (a BlockMask: no dense mask), else ``sdpa``
``padded``         ``sdpa``                                     ``sdpa``
=================  ==========================================  ==================================

Only the choice is made here; :mod:`dpokit.scoring.lm.layouts` runs each kernel (and
:mod:`dpokit.scoring.lm.flex` builds the block masks). On CPU ``sdpa`` is the only choice that
trains: FlexAttention has no CPU backward in torch 2.13 and flash-attention is CUDA-only.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Union

import torch

AUTO = "auto"
_MIN_CAPABILITY = (8, 0)  # Ampere: flash-attention 2 and the FlexAttention Triton kernels
_HALF = ("bfloat16", "float16", torch.bfloat16, torch.float16)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def flex_available() -> bool:
    """This torch has FlexAttention (``BlockMask``, ``create_block_mask``)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def choose_attention(layout: str, device: Union[str, torch.device, None] = None,
                     dtype: Union[str, torch.dtype, None] = None) -> str:
    """The attention implementation for ``layout`` on ``device`` (None: CUDA when available)
    with model weights in ``dtype`` (``None`` or ``"auto"``: unknown, so no flash-attention)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "sdpa"
    if tuple(torch.cuda.get_device_capability(device)) < _MIN_CAPABILITY:
        return "sdpa"
    if layout == "packed" and dtype in _HALF and _installed("flash_attn"):
        return "flash_attention_2"
    if layout == "prompt_shared" and flex_available() and _installed("triton"):
        return "flex_attention"
    return "sdpa"


def resolve_attention(requested: Optional[str], layout: str, device=None, dtype=None) -> Optional[str]:
    """``requested`` unchanged unless it is ``"auto"``; then :func:`choose_attention`."""
    if requested != AUTO:
        return requested
    return choose_attention(layout, device, dtype)
