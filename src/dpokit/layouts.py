"""Batch layouts: how groups of ``(prompt, completions)`` become model inputs.

Every layout runs the model's backbone and returns, for every completion token of every row (in
group-major row order, tokens in order), the hidden state that predicts it and the token id.
The log-prob engine projects those onto the vocabulary, so any loss runs on any layout, and the
tests check the layouts agree with ``padded`` to float tolerance.

``padded``: each row is ``prompt + completion``, right-padded to the longest row; one forward
over all rows of the batch (chosen and rejected together).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .logprobs import Group, rows_of

LAYOUTS: Dict[str, Callable] = {}


def register_layout(name: str):
    def decorator(fn):
        LAYOUTS[name] = fn
        return fn

    return decorator


def get_layout(name: str) -> Callable:
    if name not in LAYOUTS:
        raise ValueError(f"unknown batch layout {name!r}; choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


@register_layout("padded")
def padded_hidden(
    backbone: torch.nn.Module, groups: Sequence[Group], pad_id: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Returns ``(hidden [N, H], targets [N], completion_lengths per row)``."""
    rows = rows_of(groups)
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    predict = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose output predicts a completion token
    targets: List[int] = []
    for r, (prompt, completion) in enumerate(rows):
        n = len(prompt) + len(completion)
        input_ids[r, :n] = torch.tensor(prompt + completion)
        attention_mask[r, :n] = 1
        predict[r, len(prompt) - 1:n - 1] = True
        targets.extend(completion)
    input_ids, attention_mask, predict = input_ids.to(device), attention_mask.to(device), predict.to(device)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[predict], torch.tensor(targets, dtype=torch.long, device=device), [len(c) for _, c in rows]
