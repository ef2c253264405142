"""Forward passes -> per-token log-probs of completion tokens (and statistics a loss asks for).

The engine never materialises a ``[rows, length, vocab]`` logits tensor:

1. the model's backbone (the transformer without its LM head) runs once over all rows of the
   batch (chosen and rejected together) and returns hidden states;
2. only the hidden states that predict a completion token are kept (prompt positions are most
   of the tokens in preference data and need no vocabulary projection at all);
3. those ``[N, hidden]`` states are projected onto the vocabulary in chunks of ``chunk_size``
   positions, each chunk under activation checkpointing, so forward and backward hold one
   chunk's ``[chunk, vocab]`` fp32 logits at a time.

Statistics over the vocabulary, computed in the same chunks when requested:
``entropy`` (H(p_t)), ``sum_p2`` (sum_v p_t(v)^2, WPO), ``ref_kl`` (KL(p_ref,t || p_t), TDPO;
needs the reference model's hidden states at the same positions).

Batch layout: rows come in *groups* ``(prompt_ids, [completion_ids, ...])``; rows are ordered
group-major (pairs: chosen_0, rejected_0, chosen_1, ...). Layouts (how rows become model inputs)
live in :mod:`dpokit.layouts`; they return the selected hidden states and targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Group = Tuple[List[int], List[List[int]]]
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


def split_model(model) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """Return ``(backbone, lm_head)`` of a Hugging Face causal LM (PEFT-wrapped or not).

    LoRA layers are injected into the wrapped model's modules, so the backbone returned here
    applies the adapters (and ``disable_adapter()`` on the PEFT wrapper still works).
    """
    base = model
    if hasattr(base, "get_base_model"):  # peft.PeftModel
        base = base.get_base_model()
    base = getattr(base, "module", base)  # DDP wrapper
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


def logit_transform(model):
    """Post-projection logit transform some families apply (Gemma-2 soft-capping, Granite/Cohere scaling)."""
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

    return transform


def _chunk_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ref_hidden: Optional[torch.Tensor],
    ref_weight: Optional[torch.Tensor],
    stats: Tuple[str, ...],
    transform,
) -> Tuple[torch.Tensor, ...]:
    logits = transform(F.linear(hidden, weight, bias).float())
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
                ref_logp = torch.log_softmax(transform(F.linear(ref_hidden, ref_weight, bias).float()), dim=-1)
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
) -> Dict[str, torch.Tensor]:
    """Log-prob of ``targets`` [N] given ``hidden`` [N, H], chunked over N (and requested stats)."""
    stats = tuple(stats)
    unknown = set(stats) - set(STATS)
    if unknown:
        raise ValueError(f"unknown token statistics {sorted(unknown)}; known: {STATS}")
    if "ref_kl" in stats and (ref_hidden is None or ref_lm_head is None):
        raise ValueError("the ref_kl statistic needs the reference model's hidden states")
    transform = transform or (lambda x: x)
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    ref_weight = ref_lm_head.weight if ref_lm_head is not None else None
    pieces: List[Tuple[torch.Tensor, ...]] = []
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_size):
        args = (
            hidden[start:start + chunk_size], weight, bias, targets[start:start + chunk_size],
            None if ref_hidden is None else ref_hidden[start:start + chunk_size], ref_weight, stats, transform,
        )
        if needs_grad:
            pieces.append(checkpoint(_chunk_stats, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_stats(*args))
    names = ("logps",) + stats
    if not pieces:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return {name: empty for name in names}
    return {name: torch.cat([p[i] for p in pieces]) for i, name in enumerate(names)}


def scatter_rows(flat: torch.Tensor, lengths: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn a flat [sum(lengths)] tensor into left-aligned rows [R, max(lengths)] plus a mask."""
    device = flat.device
    lengths_t = torch.as_tensor(list(lengths), device=device)
    width = int(lengths_t.max().item()) if len(lengths) else 0
    mask = torch.arange(width, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)
    out = flat.new_zeros(len(lengths), width)
    out = out.masked_scatter(mask, flat) if flat.numel() else out
    return out, mask


def rows_of(groups: Sequence[Group]) -> List[Tuple[List[int], List[int]]]:
    return [(prompt, completion) for prompt, completions in groups for completion in completions]
