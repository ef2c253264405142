"""Batch layouts: how groups of ``(prompt, completions)`` become model inputs.

Every layout runs the model's backbone and returns, for every completion token of every row (in
group-major row order, tokens in order), the hidden state that predicts it and the token id:
``fn(backbone, groups, pad_id, device) -> (hidden [N, H], targets [N], completion length per row)``.
The log-prob engine projects those onto the vocabulary, so any loss runs on any layout, and
``tests/scoring/lm/test_layouts.py`` checks every layout against ``padded`` (log-probs and parameter
gradients) to float tolerance.

``padded``
    each row is ``prompt + completion``, right-padded to the longest row; one forward over all
    rows of the batch (chosen and rejected together). Works with every model.

``packed``
    padding-free: the ``prompt + completion`` sequences are packed first-fit-decreasing into as
    few rows as hold them (a row holds at most as many tokens as the longest sequence), with
    position ids restarting at 0 for every sequence and a block-diagonal causal mask, so no
    sequence sees another. With flash-attention kernels (``flash_attention_2/3``) all
    sequences go into one row without any mask and ``transformers`` derives the variable-length
    boundaries from the restarting position ids.

``prompt_shared``
    each group is laid out once as ``prompt, completion_1, ..., completion_K`` (any K: pairs,
    K-response lists, single completions); a completion attends to the prompt and to itself
    only, and its position ids continue from the prompt end, so every completion sees exactly
    the context it sees in ``padded`` while the prompt (most of the tokens in preference data)
    is run once instead of K times. Groups are packed into rows like ``packed``. The hidden state
    at the prompt's last token predicts the first token of every completion.

Custom masks are passed the way ``transformers`` (5.x) accepts them: a 4D mask
``[rows, 1, length, length]`` handed to the backbone is used as is (``masking_utils``
skips its own mask construction). SDPA takes it as a boolean mask (True = attend), eager as an
additive float mask (0 / dtype minimum), ``flex_attention`` as a FlexAttention ``BlockMask``
(:mod:`dpokit.scoring.lm.flex`: empty blocks skipped, no dense mask). Every position attends at least to
itself, so padding rows never produce NaN. Sliding-window models get the window applied to the
position ids inside the mask (a per-layer-type dict for models that mix full and sliding layers).

:func:`layout_supported` says whether a model can take a layout (and why not); a layout asked
of a model that cannot take it falls back with a warning (``prompt_shared`` -> ``packed`` where
that works, else ``padded``). ``layout_supported(model, name, probe=True)`` also runs a two-group
numeric check against ``padded``, the strongest test for model families not listed here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...errors import ConfigError
from ...kernels import flex_available
from .flex import block_mask
from .projection import RowGroup, rows_of

logger = logging.getLogger(__name__)

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


# ---- padded ---------------------------------------------------------------------------------------

@register_layout("padded")
def padded_hidden(
    backbone: torch.nn.Module, groups: Sequence[RowGroup], pad_id: int, device: torch.device
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


# ---- capability ---------------------------------------------------------------------------------

# how a custom 4D mask is handed to each attention implementation
_MASK_KIND = {"sdpa": "bool", "eager": "float", "flex_attention": "float"}
# families whose state or position scheme does not follow position ids + one attention mask
_UNSUPPORTED_FAMILIES = {
    "bloom": "ALiBi biases are built from the 2D padding mask",
    "mpt": "ALiBi biases are built from the sequence layout",
    "falcon": "ALiBi / fused attention paths ignore a custom mask",
    "mamba": "a recurrent state would flow across packed sequences",
    "mamba2": "a recurrent state would flow across packed sequences",
    "rwkv": "a recurrent state would flow across packed sequences",
    "recurrent_gemma": "a recurrent state would flow across packed sequences",
    "jamba": "Mamba layers carry state across packed sequences",
    "zamba": "Mamba layers carry state across packed sequences",
    "zamba2": "Mamba layers carry state across packed sequences",
    "bamba": "Mamba layers carry state across packed sequences",
    "falcon_h1": "Mamba layers carry state across packed sequences",
    "falcon_mamba": "a recurrent state would flow across packed sequences",
    "nemotron_h": "Mamba layers carry state across packed sequences",
    "granitemoehybrid": "Mamba layers carry state across packed sequences",
    "lfm2": "convolution layers mix neighbouring tokens across packed sequences",
    "qwen3_next": "linear-attention layers carry state across packed sequences",
    "xlstm": "a recurrent state would flow across packed sequences",
}
_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}


def _config_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "_orig_mod", base)
    config = getattr(base, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config; dpokit layouts need a transformers model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attention_implementation(model) -> str:
    config = _config_of(model)
    return getattr(config, "_attn_implementation", None) or "eager"


def _is_varlen(impl: str) -> bool:
    """flash-attention style kernels: no custom masks, variable-length packing from position ids."""
    return "flash" in impl


def _sliding_window(config) -> Tuple[Optional[int], Optional[List[str]]]:
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None, None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None, None
    return int(window), (list(types) if types is not None else None)


def check_layout(model, layout: str) -> None:
    """A layout the model cannot run stops the run here, before data, reference and training."""
    if layout == "padded":
        return
    ok, reason = layout_supported(model, layout)
    if not ok:
        raise ConfigError(f"train.layout: {layout!r} cannot run on this model: {reason}")


def layout_supported(model, name: str, probe: bool = False) -> Tuple[bool, str]:
    """Can ``model`` (a causal LM, its backbone, or a PEFT wrapper) run layout ``name``?

    Returns ``(ok, reason)``; ``reason`` explains a refusal, or notes how the layout will run.
    The static check looks at the attention implementation and the architecture; with
    ``probe=True`` a supported layout is also run on two tiny groups and compared with
    ``padded`` (two small forward passes; the model is put in eval mode meanwhile).
    """
    if name not in LAYOUTS:
        return False, f"unknown batch layout {name!r}; choose one of {sorted(LAYOUTS)}"
    if name == "padded":
        return True, "works with every model"
    config = _config_of(model)
    model_type = getattr(config, "model_type", "")
    if model_type in _UNSUPPORTED_FAMILIES:
        return False, f"{model_type}: {_UNSUPPORTED_FAMILIES[model_type]}"
    if getattr(config, "is_causal", True) is False:
        return False, f"{model_type}: the model is configured as bidirectional (is_causal=False)"
    layer_types = getattr(config, "layer_types", None) or []
    other = sorted(set(layer_types) - _ATTENTION_LAYER_TYPES)
    if other:
        return False, (f"{model_type}: layer types {other} are not plain attention; their state would "
                       "cross sequence or branch boundaries")
    impl = attention_implementation(model)
    if _is_varlen(impl):
        if name == "packed":
            ok, reason = True, f"{impl}: one row, variable-length kernels from restarting position ids"
        else:
            return False, (f"{impl} kernels take no custom attention mask, which {name} needs; load the model "
                           "with attn_implementation='sdpa' (or 'flex_attention'), or use layout 'packed'")
    elif impl == "flex_attention":
        ok, reason = True, "flex_attention with a FlexAttention BlockMask (empty blocks skipped)"
    elif impl in _MASK_KIND:
        ok, reason = True, f"{impl} with a custom 4D attention mask"
    else:
        return False, (f"attention implementation {impl!r} takes no custom attention mask; "
                       "use 'sdpa', 'eager', 'flex_attention' or a flash-attention kernel")
    window, _ = _sliding_window(config)
    if window and not _is_varlen(impl):
        reason += f"; sliding window of {window} tokens applied inside the mask"
    if probe:
        return _probe(model, name, reason)
    return ok, reason


def _probe(model, name: str, reason: str) -> Tuple[bool, str]:
    from .projection import split_model

    try:
        backbone, lm_head = split_model(model)
    except TypeError as err:
        return False, str(err)
    vocab = lm_head.weight.shape[0]
    ids = lambda *xs: [x % vocab for x in xs]  # noqa: E731
    groups = [(ids(1, 5, 9, 3), [ids(4, 7), ids(8, 2, 6)]), (ids(2, 11), [ids(13), ids(5, 9, 14)])]
    device = lm_head.weight.device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            expected, _, _ = padded_hidden(backbone, groups, 0, device)
            got, _, _ = _IMPLEMENTATIONS[name](backbone, groups, 0, device)
    except Exception as err:  # any failure means: not supported by this model
        return False, f"probe of layout {name!r} failed: {type(err).__name__}: {err}"
    finally:
        backbone.train(was_training)
    tol = 1e-3 if expected.dtype in (torch.float32, torch.float64) else 5e-2
    scale = expected.float().abs().max().clamp(min=1.0)
    err = (got.float() - expected.float()).abs().max() / scale
    if not bool(err <= tol):
        return False, f"probe of layout {name!r} disagrees with padded (max relative error {float(err):.2e})"
    return True, reason + "; probe agrees with padded"


# ---- packed and prompt-shared -------------------------------------------------------------------

@dataclass
class _Unit:
    """Tokens placed contiguously in one row: a sequence (packed) or a whole group (prompt-shared)."""

    ids: List[int] = field(default_factory=list)
    positions: List[int] = field(default_factory=list)
    branches: List[int] = field(default_factory=list)  # 0: shared (attended by every branch), k: completion k
    outputs: List[Tuple[int, List[int], List[int]]] = field(default_factory=list)  # (row, offsets, targets)


def _check_prompt(prompt) -> None:
    if not prompt:
        raise ValueError("a group has an empty prompt: its first completion token has no position to be "
                         "predicted from (tokenization gives every prompt at least a BOS token)")


def _sequence_units(groups: Sequence[RowGroup]) -> List[_Unit]:
    units, row = [], 0
    for prompt, completions in groups:
        _check_prompt(prompt)
        for completion in completions:
            n = len(prompt) + len(completion)
            offsets = list(range(len(prompt) - 1, n - 1))
            units.append(_Unit(list(prompt) + list(completion), list(range(n)), [0] * n,
                               [(row, offsets, list(completion))]))
            row += 1
    return units


def _group_units(groups: Sequence[RowGroup]) -> List[_Unit]:
    units, row = [], 0
    for prompt, completions in groups:
        _check_prompt(prompt)
        p = len(prompt)
        unit = _Unit(list(prompt), list(range(p)), [0] * p)
        for k, completion in enumerate(completions, start=1):
            start = len(unit.ids)
            unit.ids.extend(completion)
            unit.positions.extend(range(p, p + len(completion)))
            unit.branches.extend([k] * len(completion))
            offsets = ([p - 1] + list(range(start, start + len(completion) - 1))) if completion else []
            unit.outputs.append((row, offsets, list(completion)))
            row += 1
        units.append(unit)
    return units


def _pack(units: List[_Unit], capacity: Optional[int]) -> List[List[int]]:
    """First-fit decreasing: unit indices per row, each row at most ``capacity`` tokens (None: one row)."""
    if capacity is None:
        return [list(range(len(units)))]
    order = sorted(range(len(units)), key=lambda i: -len(units[i].ids))
    bins: List[List[int]] = []
    fill: List[int] = []
    for i in order:
        size = len(units[i].ids)
        for b, used in enumerate(fill):
            if used + size <= capacity:
                bins[b].append(i)
                fill[b] += size
                break
        else:
            bins.append([i])
            fill.append(size)
    return bins


@dataclass
class PackedBatch:
    """Model inputs of a packed or prompt-shared batch (exposed for tests and benchmarks)."""

    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    sequence_ids: torch.Tensor  # [R, T], -1 on padding
    branch_ids: torch.Tensor  # [R, T], 0 for tokens every branch of the sequence attends to
    select: torch.Tensor  # [N] flat indices into R*T of the positions predicting each target
    targets: torch.Tensor  # [N]
    lengths: List[int]  # completion length per output row (group-major)

    @property
    def num_positions(self) -> int:
        return self.input_ids.numel()

    def attention_mask(self, kind: str = "bool", dtype: torch.dtype = torch.float32,
                       window: Optional[int] = None) -> torch.Tensor:
        """``[R, 1, T, T]`` mask: same sequence, causal, a branch sees only shared tokens and itself,
        optionally within a sliding window of position ids; the diagonal is always on."""
        seq, branch, pos = self.sequence_ids, self.branch_ids, self.position_ids
        width = seq.shape[1]
        index = torch.arange(width, device=seq.device)
        mask = (seq[:, :, None] == seq[:, None, :]) & (seq[:, :, None] >= 0)
        mask &= index[None, :, None] >= index[None, None, :]
        mask &= (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
        if window is not None:
            mask &= (pos[:, :, None] - pos[:, None, :]) < window
        mask |= torch.eye(width, dtype=torch.bool, device=seq.device)
        mask = mask[:, None]
        if kind == "bool":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=seq.device).masked_fill_(~mask, torch.finfo(dtype).min)


def build_packed_batch(groups: Sequence[RowGroup], pad_id: int, share_prompt: bool, device,
                       capacity: Optional[int] = -1) -> PackedBatch:
    """Lay ``groups`` out in rows. ``capacity``: tokens per row; ``-1`` (default): the longest
    unit; ``None``: everything in one row (no padding at all)."""
    units = _group_units(groups) if share_prompt else _sequence_units(groups)
    if capacity == -1:
        capacity = max((len(u.ids) for u in units), default=1)
    bins = _pack(units, capacity)
    width = max(sum(len(units[i].ids) for i in b) for b in bins)
    rows = len(bins)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    sequence_ids = torch.full((rows, width), -1, dtype=torch.long)
    branch_ids = torch.zeros((rows, width), dtype=torch.long)
    n_rows = sum(len(u.outputs) for u in units)
    select: List[Optional[List[int]]] = [None] * n_rows
    targets: List[Optional[List[int]]] = [None] * n_rows
    sequence = 0
    for r, members in enumerate(bins):
        offset = 0
        for i in members:
            unit = units[i]
            n = len(unit.ids)
            input_ids[r, offset:offset + n] = torch.tensor(unit.ids, dtype=torch.long)
            position_ids[r, offset:offset + n] = torch.tensor(unit.positions, dtype=torch.long)
            branch_ids[r, offset:offset + n] = torch.tensor(unit.branches, dtype=torch.long)
            sequence_ids[r, offset:offset + n] = sequence
            base = r * width + offset
            for row, offsets, tokens in unit.outputs:
                select[row] = [base + o for o in offsets]
                targets[row] = tokens
            offset += n
            sequence += 1
    flat_select = [i for s in select for i in s]
    flat_targets = [t for ts in targets for t in ts]
    return PackedBatch(
        input_ids.to(device), position_ids.to(device), sequence_ids.to(device), branch_ids.to(device),
        torch.tensor(flat_select, dtype=torch.long, device=device),
        torch.tensor(flat_targets, dtype=torch.long, device=device),
        [len(t) for t in targets],
    )


def _model_dtype(backbone) -> torch.dtype:
    for param in backbone.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _run_packed(backbone, groups: Sequence[RowGroup], pad_id: int, device, share_prompt: bool):
    config = _config_of(backbone)
    impl = attention_implementation(backbone)
    if _is_varlen(impl):
        if share_prompt:
            raise ValueError(f"{impl} kernels take no custom mask, which prompt_shared needs")
        # one row without padding; transformers finds the sequence boundaries from position ids
        batch = build_packed_batch(groups, pad_id, share_prompt, device, capacity=None)
        hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    else:
        batch = build_packed_batch(groups, pad_id, share_prompt, device)
        if impl == "flex_attention" and flex_available():
            make = lambda w=None: block_mask(batch, w)  # noqa: E731  (no dense mask: see flex.py)
        else:
            kind, dtype = _MASK_KIND.get(impl, "float"), _model_dtype(backbone)
            make = lambda w=None: batch.attention_mask(kind, dtype, w)  # noqa: E731
        window, layer_types = _sliding_window(config)
        if window is not None and int(batch.position_ids.max()) < window:
            window = None  # the window never bites in this batch: one mask serves every layer
        if window is None:
            mask = make()
        elif layer_types is None or "full_attention" not in layer_types:
            mask = make(window)
        else:
            mask = {"full_attention": make(), "sliding_attention": make(window)}
        hidden = backbone(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.select)
    return selected, batch.targets, batch.lengths


def _packed_impl(backbone, groups, pad_id, device):
    return _run_packed(backbone, groups, pad_id, device, share_prompt=False)


def _prompt_shared_impl(backbone, groups, pad_id, device):
    return _run_packed(backbone, groups, pad_id, device, share_prompt=True)


_IMPLEMENTATIONS = {"padded": padded_hidden, "packed": _packed_impl, "prompt_shared": _prompt_shared_impl}
_WARNED: set = set()


def _with_fallback(name: str):
    def run(backbone, groups, pad_id, device):
        ok, reason = layout_supported(backbone, name)
        if ok:
            return _IMPLEMENTATIONS[name](backbone, groups, pad_id, device)
        fallback = "packed" if name == "prompt_shared" and layout_supported(backbone, "packed")[0] else "padded"
        key = (type(backbone).__name__, name, reason)
        if key not in _WARNED:
            _WARNED.add(key)
            message = f"batch layout {name!r} is not supported here ({reason}); using {fallback!r}"
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return _IMPLEMENTATIONS[fallback](backbone, groups, pad_id, device)

    run.__name__ = f"{name}_hidden"
    run.__doc__ = f"Layout {name!r} (see the module docstring); falls back with a warning when unsupported."
    return run


register_layout("packed")(_with_fallback("packed"))
register_layout("prompt_shared")(_with_fallback("prompt_shared"))
