"""Forward passes -> per-token log-probs of completion tokens (and statistics a loss asks for).

The engine never materialises a ``[rows, length, vocab]`` logits tensor:

1. the model's backbone (the transformer without its LM head) runs once over all rows of the
   batch (chosen and rejected together, laid out by :mod:`dpokit.scoring.lm.layouts`) and returns hidden
   states;
2. only the hidden states that predict a completion token are kept (prompt positions are most
   of the tokens in preference data and need no vocabulary projection at all);
3. those ``[N, hidden]`` states are projected onto the vocabulary in chunks of ``chunk_size``
   positions by :class:`ChunkedProjection`, a ``torch.autograd.Function`` whose backward
   recomputes each chunk's logits and accumulates the gradients of the hidden states and of the
   LM-head weight (and bias) chunk by chunk. Forward and backward hold one ``[chunk, vocab]``
   fp32 block at a time; nothing of size ``[N, vocab]`` is ever saved.

Statistics over the vocabulary, computed in the same chunks when requested, all with exact
gradients (derived below, checked against autograd on full logits in ``tests/scoring/lm/test_projection.py``).
With ``z`` the logits of one position, ``p = softmax(z)``, ``t`` the target token:

=============  ==============================  =========================================
name           value                           d value / d z_j
=============  ==============================  =========================================
``logps``      log p_t                         1[j = t] - p_j
``entropy``    H = -sum_v p_v log p_v          -p_j (log p_j + H)
``sum_p2``     S = sum_v p_v^2  (WPO)          2 p_j (p_j - S)
``ref_kl``     KL(q || p), q = p_ref  (TDPO)   p_j - q_j      (no gradient to the reference)
=============  ==============================  =========================================

Logit transforms some families apply after the LM head (Gemma-2 soft-capping, Granite/Cohere
scaling) are honoured; their derivative is taken by autograd on the chunk inside the backward.

Batch layout: rows come in *groups* ``(prompt_ids, [completion_ids, ...])``; rows are ordered
group-major (pairs: chosen_0, rejected_0, chosen_1, ...). Layouts (how rows become model inputs)
live in :mod:`dpokit.scoring.lm.layouts`; they return the selected hidden states and targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

RowGroup = Tuple[List[int], List[List[int]]]  # (prompt ids, [completion ids]): one prompt and its completions
STATS = ("entropy", "sum_p2", "ref_kl")


@dataclass
class TokenLogprobs:
    """Per-row completion log-probs, left-aligned: ``token_logps[r, j]`` is the j-th completion
    token of row r; ``mask`` marks real tokens; ``stats[name]`` has the same shape."""

    token_logps: torch.Tensor
    mask: torch.Tensor
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def sums(self) -> torch.Tensor:
        return self.token_logps.sum(-1)

    def rows(self, index) -> "TokenLogprobs":
        return TokenLogprobs(self.token_logps[index], self.mask[index], {k: v[index] for k, v in self.stats.items()})


# ---- models -----------------------------------------------------------------------------------

def _unwrap_compiled(model):
    """``torch.compile(model)`` wraps the model in an ``OptimizedModule`` whose compiled forward the
    engine never calls (it runs the backbone and the LM head separately). Unwrap it and compile
    the decoder layers in place instead (see :func:`compile_backbone`)."""
    original = getattr(model, "_orig_mod", None)
    if original is not None and type(model).__name__ == "OptimizedModule":
        compile_backbone(original)
        return original
    return model


def split_model(model) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """Return ``(backbone, lm_head)`` of a Hugging Face causal LM (PEFT-wrapped or not).

    LoRA layers are injected into the wrapped model's modules, so the backbone returned here
    applies the adapters (and ``disable_adapter()`` on the PEFT wrapper still works). A model
    wrapped by ``torch.compile`` is unwrapped and its decoder layers compiled in place.
    """
    base = _unwrap_compiled(model)
    if hasattr(base, "get_base_model"):  # peft.PeftModel
        base = base.get_base_model()
    base = getattr(base, "module", base)  # DDP wrapper
    base = _unwrap_compiled(base)
    lm_head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    backbone = None
    if hasattr(base, "get_decoder"):
        try:
            backbone = base.get_decoder()
        except (AttributeError, NotImplementedError):
            backbone = None
    if backbone is None:
        backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if backbone is None or lm_head is None or backbone is base:
        raise TypeError(
            f"{type(base).__name__}: cannot find the backbone and LM head; dpokit needs a causal LM "
            "with get_output_embeddings() and a decoder (base_model_prefix)"
        )
    return backbone, lm_head


def compile_backbone(model, **compile_kwargs) -> torch.nn.Module:
    """Regional ``torch.compile``: compile each decoder layer of ``model`` in place.

    Compiling the repeated layer (rather than the whole model) compiles one graph for all layers,
    keeps parameter names (checkpoints load back unchanged), works under activation checkpointing,
    and with ``dynamic=True`` (the default here) one graph serves every sequence length and layout.
    The decoder layers are found through ``model._no_split_modules`` (the class names
    ``transformers`` declares as the repeated block); without it the whole backbone is compiled.
    Calling it twice is a no-op. Returns ``model``.
    """
    if getattr(model, "_dpokit_compiled", False):
        return model
    compile_kwargs.setdefault("dynamic", True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names] if names else []
    if layers:
        for layer in layers:
            layer.compile(**compile_kwargs)
    else:
        backbone, _ = split_model(base)
        backbone.compile(**compile_kwargs)
    model._dpokit_compiled = True
    return model


def logit_transform(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """Post-projection logit transform some families apply (Gemma-2 soft-capping, Granite/Cohere scaling).

    The returned function has ``is_identity = True`` when the model applies none."""
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    transform.is_identity = scale is None and divide is None and softcap is None
    transform.softcap = softcap
    transform.softcap_only = softcap is not None and scale is None and divide is None
    return transform


def _is_identity(transform) -> bool:
    return transform is None or getattr(transform, "is_identity", False)


# ---- chunked projection with a recomputing backward ---------------------------------------------

def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Logits are handled in fp32 (fp64 stays fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def chunk_logits(hidden, weight, bias, transform) -> torch.Tensor:
    logits = _upcast(F.linear(hidden, weight, bias))
    return logits if _is_identity(transform) else transform(logits)


class ChunkedProjection(torch.autograd.Function):
    """``(logps, *stats)`` of ``targets`` under ``softmax(transform(hidden @ weight.T + bias))``,
    computed ``chunk_size`` rows at a time; see the module docstring for the gradients.

    Saved for backward: the inputs (no copies) and three floats per row (log-partition, entropy,
    sum of squared probabilities). The backward recomputes each chunk's logits (one extra
    ``[chunk, H] x [H, V]`` matmul per chunk, the price of never storing ``[N, V]``) and
    accumulates the LM-head gradient in fp32 when the weight is in a 16-bit type.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, chunk_size, transform, stats):
        n = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        logps = hidden.new_empty(n, dtype=dtype)
        logz_all = hidden.new_empty(n, dtype=dtype)
        out = {name: hidden.new_empty(n, dtype=dtype) for name in stats}
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            z = chunk_logits(hidden[start:stop], weight, bias, transform)
            logz = torch.logsumexp(z, dim=-1)
            logz_all[start:stop] = logz
            logps[start:stop] = z.gather(-1, targets[start:stop, None]).squeeze(-1) - logz
            if not stats:
                continue
            logp = z.sub_(logz[:, None])  # z is a fresh buffer: reuse it for log p
            p = logp.exp()
            if "entropy" in out:
                out["entropy"][start:stop] = -(p * logp).sum(-1)
            if "sum_p2" in out:
                out["sum_p2"][start:stop] = (p * p).sum(-1)
            if "ref_kl" in out:
                ref_logp = torch.log_softmax(chunk_logits(ref_hidden[start:stop], ref_weight, ref_bias, transform), -1)
                out["ref_kl"][start:stop] = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        entropy = out.get("entropy", logps.new_empty(0))
        sum_p2 = out.get("sum_p2", logps.new_empty(0))
        ctx.save_for_backward(hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, logz_all, entropy, sum_p2)
        ctx.chunk_size, ctx.transform, ctx.stats = chunk_size, transform, stats
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.set_materialize_grads(False)
        return (logps,) + tuple(out[name] for name in stats)

    @staticmethod
    def backward(ctx, grad_logps, *grad_stats):
        (hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, logz_all, entropy,
         sum_p2) = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grads = dict(zip(ctx.stats, grad_stats))
        g_entropy, g_sum_p2, g_ref_kl = grads.get("entropy"), grads.get("sum_p2"), grads.get("ref_kl")
        transform = ctx.transform
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        wide = weight.dtype in (torch.float16, torch.bfloat16)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32 if wide else weight.dtype) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32 if wide else bias.dtype) if need_bias else None
        nothing_flows = grad_logps is None and all(g is None for g in grad_stats)
        if nothing_flows or not (need_hidden or need_weight or need_bias):
            return _finish(None if grad_hidden is None else grad_hidden.zero_(), grad_weight, grad_bias, weight, bias)
        device_type, autocast_on, autocast_dtype = ctx.autocast
        n, chunk = hidden.shape[0], ctx.chunk_size
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                h = hidden[start:stop]
                u = F.linear(h, weight, bias)
                if _is_identity(transform):
                    logp = _upcast(u)  # a fresh buffer (u is not needed again): turned into log p in place
                else:
                    with torch.enable_grad():
                        u_leaf = u.detach().requires_grad_(True)
                        z = transform(_upcast(u_leaf))
                    logp = z.detach().clone()
                logp.sub_(logz_all[start:stop, None])
                p = logp.exp()
                # dz = d(sum_r g_r * value_r) / d logits, summed over the requested outputs
                if grad_logps is not None:
                    g = grad_logps[start:stop, None]
                    dz = p * -g
                    dz.scatter_add_(-1, targets[start:stop, None], g)
                else:
                    dz = torch.zeros_like(p)
                if g_entropy is not None:
                    dz.sub_((logp + entropy[start:stop, None]).mul_(p).mul_(g_entropy[start:stop, None]))
                if g_sum_p2 is not None:
                    dz.add_((p - sum_p2[start:stop, None]).mul_(p).mul_(2 * g_sum_p2[start:stop, None]))
                if g_ref_kl is not None:
                    q = torch.softmax(chunk_logits(ref_hidden[start:stop], ref_weight, ref_bias, transform), -1)
                    dz.add_((p - q).mul_(g_ref_kl[start:stop, None]))
                del p, logp
                if _is_identity(transform):
                    du = dz.to(u.dtype)
                else:
                    du = torch.autograd.grad(z, u_leaf, dz)[0]
                del dz
                if need_hidden:
                    grad_hidden[start:stop] = (du @ weight.to(du.dtype)).to(hidden.dtype)
                if need_weight:
                    if not autocast_on and grad_weight.dtype == du.dtype == h.dtype:
                        grad_weight.addmm_(du.t(), h)
                    else:
                        grad_weight.add_((du.t() @ h.to(du.dtype)).to(grad_weight.dtype))
                if need_bias:
                    grad_bias.add_(du.sum(0).to(grad_bias.dtype))
        return _finish(grad_hidden, grad_weight, grad_bias, weight, bias)


def _autocast_state(device_type: str):
    try:
        return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4
        if device_type == "cuda":
            return device_type, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return device_type, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


def _finish(grad_hidden, grad_weight, grad_bias, weight, bias):
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return (grad_hidden, grad_weight, grad_bias) + (None,) * 7


def _chunk_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ref_hidden: Optional[torch.Tensor],
    ref_weight: Optional[torch.Tensor],
    ref_bias: Optional[torch.Tensor],
    stats: Tuple[str, ...],
    transform,
) -> Tuple[torch.Tensor, ...]:
    """One chunk by plain autograd (used under activation checkpointing when ``fused=False``)."""
    logits = chunk_logits(hidden, weight, bias, transform)
    logz = torch.logsumexp(logits, dim=-1)
    out = [logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz]
    if stats:
        logp = logits - logz.unsqueeze(-1)
        p = logp.exp()
        for name in stats:
            if name == "entropy":
                out.append(-(p * logp).sum(-1))
            elif name == "sum_p2":
                out.append((p * p).sum(-1))
            elif name == "ref_kl":
                ref_logp = torch.log_softmax(chunk_logits(ref_hidden, ref_weight, ref_bias, transform), dim=-1)
                out.append((ref_logp.exp() * (ref_logp - logp)).sum(-1))
    return tuple(out)


def project_selected(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Module,
    stats: Sequence[str] = (),
    chunk_size: int = 1024,
    transform=None,
    ref_hidden: Optional[torch.Tensor] = None,
    ref_lm_head: Optional[torch.nn.Module] = None,
    fused: bool = True,
) -> Dict[str, torch.Tensor]:
    """Log-prob of ``targets`` [N] given ``hidden`` [N, H], chunked over N (and requested stats).

    Returns ``{"logps": [N], <stat>: [N], ...}`` in fp32 (fp64 for fp64 inputs). ``fused=True`` (default) uses
    :class:`ChunkedProjection`; ``fused=False`` runs each chunk by plain autograd under activation
    checkpointing (same values and gradients, about the same memory, slower backward).
    """
    stats = tuple(stats)
    unknown = set(stats) - set(STATS)
    if unknown:
        raise ValueError(f"unknown token statistics {sorted(unknown)}; known: {STATS}")
    if "ref_kl" in stats and (ref_hidden is None or ref_lm_head is None):
        raise ValueError("the ref_kl statistic needs the reference model's hidden states")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    ref_weight = ref_lm_head.weight if ref_lm_head is not None else None
    ref_bias = getattr(ref_lm_head, "bias", None) if ref_lm_head is not None else None
    if ref_hidden is not None:
        ref_hidden = ref_hidden.detach()
    names = ("logps",) + stats
    if fused:  # also for N = 0: the outputs stay connected and backward gives zero gradients
        pieces = ChunkedProjection.apply(hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias,
                                         chunk_size, transform, stats)
        return dict(zip(names, pieces))
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
        return {name: empty for name in names}
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunks: List[Tuple[torch.Tensor, ...]] = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (
            hidden[start:start + chunk_size], weight, bias, targets[start:start + chunk_size],
            None if ref_hidden is None else ref_hidden[start:start + chunk_size], ref_weight, ref_bias, stats,
            transform,
        )
        chunks.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if needs_grad else _chunk_stats(*args))
    return {name: torch.cat([c[i] for c in chunks]) for i, name in enumerate(names)}


def scatter_rows(flat: torch.Tensor, lengths: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn a flat [sum(lengths)] tensor into left-aligned rows [R, max(lengths)] plus a mask."""
    device = flat.device
    lengths_t = torch.as_tensor(list(lengths), device=device)
    width = int(lengths_t.max().item()) if len(lengths) else 0
    mask = torch.arange(width, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)
    out = flat.new_zeros(len(lengths), width)
    out = out.masked_scatter(mask, flat) if flat.numel() else out
    return out, mask


def rows_of(groups: Sequence[RowGroup]) -> List[Tuple[List[int], List[int]]]:
    return [(prompt, completion) for prompt, completions in groups for completion in completions]
