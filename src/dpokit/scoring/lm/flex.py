"""FlexAttention block masks for the packed and prompt-shared layouts.

With ``attn_implementation='flex_attention'`` the layouts hand the backbone a
``torch.nn.attention.flex_attention.BlockMask`` instead of a dense ``[rows, 1, T, T]`` float
mask. ``transformers`` (5.x) passes a 4D ``BlockMask`` given as ``attention_mask`` straight to
``flex_attention(block_mask=...)`` (``masking_utils`` skips its own mask construction for any
4D mask), so the kernel skips every ``128 x 128`` block the mask leaves empty (other sequences,
other branches, the future) and never reads a dense mask. A dense float mask given to
``flex_attention`` is instead read inside a ``score_mod`` for every query/key pair and every
block is computed.

The mask is the one :meth:`~dpokit.scoring.lm.layouts.PackedBatch.attention_mask` builds
densely (``tests/scoring/lm/test_flex.py`` checks them equal entry by entry): same sequence,
causal, a completion branch sees the shared prompt and itself, optionally a sliding window
over position ids, and the diagonal always on (padding rows attend to themselves: no NaN).

Where a dense mask still appears: ``create_block_mask`` with ``_compile=False`` (used on CPU,
where compiling the mask builder would cost more than it saves) evaluates the mask function
over all ``rows x T x T`` pairs once per batch to find the non-empty blocks (a transient boolean
tensor, freed before the forward); on CUDA the builder is compiled (``_compile=True``, as
``transformers`` does) and works block by block. The mask is built once per forward and shared
by all layers.

On CPU (torch 2.13) ``flex_attention`` runs forward only (its backward raises
``NotImplementedError`` on CPU) and, compiled as ``transformers`` always calls it, in
float32/bfloat16 only: training with ``flex_attention`` needs a GPU.
"""

from __future__ import annotations

from typing import Optional

import torch

_BLOCK = 128


def _padded(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """``t`` [R, T] padded on the right to ``width`` (the mask builder and the kernel may index
    positions of the last, partial block)."""
    extra = width - t.shape[1]
    return torch.nn.functional.pad(t, (0, extra), value=value) if extra > 0 else t


def block_mask(batch, window: Optional[int] = None):
    """The ``BlockMask`` of a :class:`~dpokit.scoring.lm.layouts.PackedBatch` (``window``: a
    sliding window over position ids, as in the dense mask)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = batch.sequence_ids.shape
    width = -(-length // _BLOCK) * _BLOCK
    seq = _padded(batch.sequence_ids, width, -1)
    branch = _padded(batch.branch_ids, width, 0)
    pos = _padded(batch.position_ids, width, 0)

    def mask_mod(b, h, q, kv):
        same = (seq[b, q] == seq[b, kv]) & (seq[b, q] >= 0)
        visible = (branch[b, kv] == 0) | (branch[b, q] == branch[b, kv])
        keep = same & (q >= kv) & visible
        if window is not None:
            keep = keep & ((pos[b, q] - pos[b, kv]) < window)
        return keep | (q == kv)

    device = batch.sequence_ids.device
    return create_block_mask(mask_mod, rows, None, length, length, device=device,
                             _compile=device.type != "cpu")
