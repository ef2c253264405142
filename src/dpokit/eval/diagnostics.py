"""Model-side diagnostics: next-token statistics along completions, sampling from token ids, and a
layer-wise (logit-lens) representation trace. Definitions in docs/evaluation.md.

Everything here runs under ``torch.no_grad``, batch by batch, and projects hidden states onto the
vocabulary ``chunk_size`` positions at a time (never a ``[batch, length, vocab]`` logits tensor).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from ..scoring.lm.engine import LogProbEngine
from ..scoring.lm.projection import RowGroup, chunk_logits, logit_transform, split_model
from ..losses import Needs
from .metrics import fisher_rao, next_token_kl, spectral_contraction, topk_indicators


# ---- references ----------------------------------------------------------------------------------

@contextlib.contextmanager
def as_model(reference):
    """A plain ``nn.Module`` as is; a :mod:`dpokit.reference` object with a model through its
    ``active()`` context (so a LoRA policy's disabled adapters work as the reference)."""
    if reference is None or isinstance(reference, torch.nn.Module):
        yield reference
    elif getattr(reference, "has_model", False):
        with reference.active() as model:
            yield model
    else:
        raise ValueError("this diagnostic needs a reference model, not precomputed reference log-probs")


def has_reference_model(reference) -> bool:
    return isinstance(reference, torch.nn.Module) or bool(getattr(reference, "has_model", False))


# ---- next-token statistics along completions -------------------------------------------------------

@torch.no_grad()
def completion_statistics(model, groups: Sequence[RowGroup], pad_token_id: int, reference=None, k: int = 10,
                          batch_size: int = 16, chunk_size: int = 256, pool: bool = False) -> Dict[str, torch.Tensor]:
    """Per-row (group-major) sums over the completion tokens of each row, on CPU:

    ``logps`` (log-likelihood of the completion), ``lengths``, ``topk_mass`` and ``topk_entropy``
    (sums over positions of the Shi et al. indicators of the model's next-token distribution);
    with a ``reference`` model also ``ref_logps``, ``ref_topk_mass``, ``ref_topk_entropy`` and ``kl``
    (the sum over positions of the exact next-token ``KL(model || reference)``); with ``pool``,
    ``pooled`` [R, H] (and ``ref_pooled``): the mean of the final hidden states that predict the
    completion tokens (the states the LM head reads).
    """
    engine = LogProbEngine(Needs(reference=False), pad_token_id, "padded", chunk_size)
    transform = logit_transform(model)
    parts: Dict[str, List[torch.Tensor]] = {}

    def add(name, value):
        parts.setdefault(name, []).append(value.detach().float().cpu())

    for start in range(0, len(groups), batch_size):
        chunk_groups = list(groups[start:start + batch_size])
        hidden, targets, lengths, head = engine.hidden(model, chunk_groups)
        ref_hidden = ref_head = None
        if reference is not None:
            with as_model(reference) as ref_model:
                ref_hidden, _, _, ref_head = engine.hidden(ref_model, chunk_groups)
                ref_transform = logit_transform(ref_model)
        rows = len(lengths)
        row_of = torch.repeat_interleave(torch.arange(rows, device=hidden.device),
                                         torch.as_tensor(lengths, device=hidden.device))
        sums = {name: torch.zeros(rows, dtype=torch.float64, device=hidden.device)
                for name in ("logps", "topk_mass", "topk_entropy") + (("ref_logps", "ref_topk_mass",
                                                                       "ref_topk_entropy", "kl") if reference is not None else ())}
        for lo in range(0, hidden.shape[0], chunk_size):
            hi = min(lo + chunk_size, hidden.shape[0])
            index, target = row_of[lo:hi], targets[lo:hi, None]
            logp = torch.log_softmax(chunk_logits(hidden[lo:hi], head.weight, getattr(head, "bias", None), transform).float(), -1)
            mass, entropy = topk_indicators(logp, k)
            sums["logps"].index_add_(0, index, logp.gather(-1, target).squeeze(-1).double())
            sums["topk_mass"].index_add_(0, index, mass.double())
            sums["topk_entropy"].index_add_(0, index, entropy.double())
            if reference is not None:
                logq = torch.log_softmax(chunk_logits(ref_hidden[lo:hi], ref_head.weight, getattr(ref_head, "bias", None),
                                                       ref_transform).float(), -1).to(logp.device)
                ref_mass, ref_entropy = topk_indicators(logq, k)
                sums["ref_logps"].index_add_(0, index, logq.gather(-1, target).squeeze(-1).double())
                sums["ref_topk_mass"].index_add_(0, index, ref_mass.double())
                sums["ref_topk_entropy"].index_add_(0, index, ref_entropy.double())
                sums["kl"].index_add_(0, index, next_token_kl(logp, logq).double())
        for name, value in sums.items():
            add(name, value)
        add("lengths", torch.as_tensor(lengths, dtype=torch.float32))
        if pool:
            count = torch.as_tensor(lengths, device=hidden.device, dtype=torch.float32).clamp_min(1)[:, None]
            add("pooled", torch.zeros(rows, hidden.shape[-1], device=hidden.device).index_add_(0, row_of, hidden.float()) / count)
            if ref_hidden is not None:
                add("ref_pooled", torch.zeros(rows, ref_hidden.shape[-1], device=hidden.device)
                    .index_add_(0, row_of, ref_hidden.float().to(hidden.device)) / count)
    return {name: torch.cat(values) for name, values in parts.items()}


# ---- sampling -----------------------------------------------------------------------------------------

@dataclass
class Sample:
    ids: List[int]  # completion token ids, EOS excluded
    text: str
    ended: bool  # the model emitted EOS (False: cut at max_new_tokens)

    def completion(self, eos_token_id: int) -> List[int]:
        """The scored completion: the ids plus EOS when the model ended the answer itself."""
        return self.ids + [eos_token_id] if self.ended else list(self.ids)


@torch.no_grad()
def sample_from_ids(model, tokenizer, prompt_ids: Sequence[List[int]], n: int = 1, max_new_tokens: int = 64,
                    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, seed: int = 0) -> List[List[Sample]]:
    """``n`` sampled completions per prompt (given as token ids, left-padded here), from the model's
    distribution with ``temperature`` and ``top_p`` only (``top_k`` is disabled: the generation
    config's default of 50 would bias the KL estimates). The global RNG state is left as it was
    (sampling is seeded with ``seed`` inside a forked RNG)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: List[List[Sample]] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompt_ids), batch_size):
                chunk = [list(p) for p in prompt_ids[start:start + batch_size]]
                width = max(len(p) for p in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):
                    input_ids[i, width - len(p):] = torch.tensor(p)
                    mask[i, width - len(p):] = 1
                generated = model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                    temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                    pad_token_id=pad, eos_token_id=eos, use_cache=True,
                )[:, width:].tolist()
                for i in range(len(chunk)):
                    group = []
                    for row in generated[i * n:(i + 1) * n]:
                        ended = eos in row
                        if ended:
                            row = row[:row.index(eos)]
                        row = [t for t in row if t != pad]
                        group.append(Sample(row, tokenizer.decode(row, skip_special_tokens=True), ended))
                    out.append(group)
    finally:
        model.train(was_training)
    return out


# ---- layer-wise trace (logit lens) --------------------------------------------------------------------

_FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_norm", "norm_f")
_LAYER_LISTS = ("layers", "h", "blocks", "layer")


def decoder_layers(backbone) -> List[torch.nn.Module]:
    for name in _LAYER_LISTS:
        layers = getattr(backbone, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return list(layers)
    names = set(getattr(backbone, "_no_split_modules", None) or [])
    layers = [m for m in backbone.modules() if type(m).__name__ in names]
    if not layers:
        raise TypeError(f"{type(backbone).__name__}: cannot find the decoder layers for the layer trace")
    return layers


def final_norm(backbone):
    for name in _FINAL_NORMS:
        module = getattr(backbone, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return torch.nn.Identity()


@torch.no_grad()
def block_outputs(model, sequences: Sequence[List[int]], pad_token_id: int, batch_size: int = 16) -> List[torch.Tensor]:
    """The output of every decoder block at every real (non-padding) position of ``sequences``:
    a list over layers of ``[positions, hidden]`` tensors (positions in sequence order)."""
    backbone, _ = split_model(model)
    layers = decoder_layers(backbone)
    device = next(model.parameters()).device
    captured: List[List[torch.Tensor]] = [[] for _ in layers]
    current: Dict[int, torch.Tensor] = {}

    def hook_for(i):
        def hook(module, args, output):
            current[i] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            width = max(len(s) for s in chunk)
            input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                input_ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            current.clear()
            backbone(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            keep = mask.bool().to(device)
            for i in range(len(layers)):
                captured[i].append(current[i][keep].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [torch.cat(parts) for parts in captured]


@torch.no_grad()
def layer_trace(model, sequences: Sequence[List[int]], pad_token_id: int, max_positions: int = 512,
                chunk_size: int = 256, window=(0.1, 0.6)) -> Dict[str, List[float]]:
    """SPINAL-style depth trace of ``model`` on ``sequences`` (token-id lists), our estimator:

    * ``contraction[l]``: :func:`~dpokit.eval.metrics.spectral_contraction` of block ``l``'s outputs
      (positions x hidden), one value per block;
    * ``transport[l]``: mean over positions of the Fisher-Rao distance ``2 arccos BC`` between the
      logit-lens next-token distributions (final norm + LM head on the block output, full
      vocabulary) of blocks ``l`` and ``l + 1``, one value per adjacent pair of blocks.

    At most ``max_positions`` positions are used (whole sequences, in order)."""
    kept, total = [], 0
    for s in sequences:
        if total >= max_positions:
            break
        s = list(s)[:max_positions - total]
        kept.append(s)
        total += len(s)
    outputs = block_outputs(model, kept, pad_token_id)
    backbone, head = split_model(model)
    norm = final_norm(backbone)
    transform = logit_transform(model)
    weight, bias = head.weight, getattr(head, "bias", None)
    device, dtype = weight.device, weight.dtype
    contraction = [spectral_contraction(h, window) for h in outputs]
    transport = []
    n = outputs[0].shape[0]

    def lens(h):
        return torch.log_softmax(chunk_logits(norm(h.to(device, dtype)), weight, bias, transform).float(), -1)

    for layer in range(len(outputs) - 1):
        total_distance = 0.0
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            total_distance += float(fisher_rao(lens(outputs[layer][lo:hi]), lens(outputs[layer + 1][lo:hi])).sum())
        transport.append(total_distance / max(n, 1))
    return {"contraction": contraction, "transport": transport, "positions": n}
