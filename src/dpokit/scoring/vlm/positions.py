"""Multimodal rotary positions (M-RoPE, Qwen2-VL / Qwen2.5-VL) for the feature-table scorer.

Qwen2-VL gives every token a ``(temporal, height, width)`` position. A text token has the same
value ``p`` on all three axes; an image whose merged grid is ``t x h x w`` tokens, starting at
text position ``s``, gives its token at grid cell ``(i, j, l)`` the position ``(s + i, s + j, s + l)``,
and the next text token continues at ``s + max(h, w)`` (``get_rope_index`` in ``transformers``).

The layouts hand the backbone ordinary 1D positions: within one sequence, token ``n`` sits at
``n`` (``padded``), or sequences restart at 0 (``packed``), or completions continue from the prompt
end (``prompt_shared``). Every image lies in the prompt, so the M-RoPE position of any token is its
1D position shifted by what the images before it in its sequence saved: an image of ``n`` tokens
occupies ``max(h, w)`` text positions, ``n - max(h, w)`` fewer than its tokens. With
``S`` = the sum of those savings over the images that end before a token,

* text token at 1D position ``q``: ``(q - S, q - S, q - S)``;
* the ``m``-th token of an image (grid cell ``(i, j, l)``) at ``q``: ``(q - m - S) + (i, j, l)``.

This reproduces ``get_rope_index`` for every layout (``tests/scoring/vlm/test_qwen2_vl.py`` checks
the positions against it and the log-probs and gradients of every layout against ``padded``).
"""

from __future__ import annotations

from typing import Optional

import torch


class MultimodalRopePositions:
    """3D positions for a batch whose image tokens are the virtual ids ``-(k + 1)`` (row ``k`` of the
    batch's feature table). ``grid_thw``: ``[n_images, 3]`` patch grids (the processor's
    ``image_grid_thw``); ``merge``: the vision tower's ``spatial_merge_size``."""

    def __init__(self, grid_thw: torch.Tensor, merge: int):
        offsets, index, saving = [], [], []
        for t, h, w in grid_thw.tolist():
            h, w = h // merge, w // merge
            grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
            n = t * h * w
            offsets.append(grid.reshape(3, -1))
            index.append(torch.arange(n))
            last = torch.zeros(n, dtype=torch.long)
            last[-1] = n - max(h, w)
            saving.append(last)
        self.offsets = torch.cat(offsets, dim=1) if offsets else torch.zeros(3, 0, dtype=torch.long)
        self.index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
        self.saving = torch.cat(saving) if saving else torch.zeros(0, dtype=torch.long)

    @property
    def rows(self) -> int:
        return int(self.index.numel())

    def __call__(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """``[3, R, T]`` positions for ``input_ids`` ``[R, T]`` laid out at 1D ``position_ids``
        (``None``: ``0..T-1`` on every row, the padded layout)."""
        device = input_ids.device
        rows, width = input_ids.shape
        arange = torch.arange(width, device=device)
        if position_ids is None:
            position_ids = arange.expand(rows, width)
        is_image = input_ids < 0
        k = (-input_ids - 1).clamp(min=0, max=max(self.rows - 1, 0))
        zero = torch.zeros_like(input_ids)
        if self.rows:
            saving = torch.where(is_image, self.saving.to(device)[k], zero)
            index = torch.where(is_image, self.index.to(device)[k], zero)
            offsets = torch.where(is_image, self.offsets.to(device)[:, k], zero)
        else:
            saving, index, offsets = zero, zero, zero.expand(3, rows, width)
        before = saving.cumsum(-1) - saving  # savings of the images that end before each token
        start = torch.cummax(torch.where(position_ids == 0, arange, 0), dim=-1).values  # its sequence's start
        shift = before - before.gather(-1, start)
        base = position_ids - index - shift
        return base.unsqueeze(0) + offsets


def rope_positions(model, grid_thw: Optional[torch.Tensor]):
    """The position scheme of ``model``'s language model: ``None`` for 1D positions (Llava), a
    :class:`MultimodalRopePositions` for the M-RoPE families."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in MROPE_FAMILIES:
        return None
    merge = int(config.vision_config.spatial_merge_size)
    grid = grid_thw if grid_thw is not None else torch.zeros(0, 3, dtype=torch.long)
    return MultimodalRopePositions(grid.cpu(), merge)


MROPE_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
