"""A fused reference: several source models combined at the sequence level (InfiFPO).

Source: Gu et al. 2025, *InfiFPO: Implicit Model Fusion via Preference Optimization*, arXiv 2505.13878,
Eq. 13. The pivot ``M^p`` (the policy) is trained against a fused reference built from N source models
``M_i^s`` that may each have their own tokenizer::

    L = -log sigmoid( beta * lbar M^p(y_w|x) / M_fu(y_w|x)  -  beta * lbar M^p(y_l|x) / M_fu(y_l|x) )
    log M_fu(y|x) = sum_i gamma_i * log Clip(M_i^s(y|x))

Everything is a *sequence* log-probability, so no vocabulary alignment is needed: each completion is
decoded to text with the policy's tokenizer, re-tokenized by every source's own tokenizer, and the
source's token log-probs are summed over its own completion tokens.

* ``length_norm`` (default on): ``lbar M(y|x) = log M(y|x) / |y|_M``, the mean log-prob per token of
  each model's own tokenization. The fused value is then a per-token quantity ``f``; it is handed to
  the losses as the sequence value ``f * |y|_p`` (``|y|_p``: the policy's completion length), so
  ``loss: sigmoid_norm`` (which divides policy-minus-reference by ``|y|_p``) is exactly Eq. 13, and
  ``loss: dpo`` is DPO against the fused reference in the policy's token units.
* ``clip`` (default on): each source is clipped against the *initial pivot* (the frozen copy of the
  initial policy, or ``reference.path``): ``max(s_i, p)`` on chosen completions, ``min(s_i, p)`` on
  rejected ones, so a source worse than the pivot cannot weaken the target. The direction is read from
  the paper's overview figure, not from released training code [partial].
* ``fusion``: ``mean`` (the released script's default; ``gamma_i = 1/N``, or ``fusion_weights``) or
  ``max_margin``: ``gamma`` one-hot on the source whose (clipped) value differs most from the pivot's,
  chosen separately for every completion [partial: choosing on clipped values is a reading of the
  figure]. The released script's ``ref_offset`` is not implemented: its meaning is not documented.

With one source equal to the initial pivot the fused reference is the plain reference, so the loss
is plain DPO (or ``sigmoid_norm``), whatever ``clip`` and ``fusion``.
"""

from __future__ import annotations

import contextlib
import os
from typing import List, Optional, Sequence

import torch

from .data.files import looks_like_hub_id
from .errors import ConfigError
from .scoring.lm.projection import TokenLogprobs

FUSIONS = ("mean", "max_margin")


def fuse_sequence_logps(sources: torch.Tensor, pivot: torch.Tensor, chosen: Optional[torch.Tensor],
                        fusion: str = "mean", weights: Optional[Sequence[float]] = None,
                        clip: bool = True) -> torch.Tensor:
    """The fused reference value of every row.

    ``sources`` [N, R]: each source's (length-normalised or summed) log-prob of each row; ``pivot`` [R]:
    the initial pivot's value in the same units; ``chosen`` [R] bool (True: a chosen completion, False:
    a rejected one; needed with ``clip``). Returns [R]: ``sum_i gamma_i clip_i``."""
    if clip:
        if chosen is None:
            raise ValueError("clipping needs to know which rows are chosen and which rejected")
        clipped = torch.where(chosen.unsqueeze(0), torch.maximum(sources, pivot.unsqueeze(0)),
                              torch.minimum(sources, pivot.unsqueeze(0)))
    else:
        clipped = sources
    if fusion == "mean":
        n = sources.shape[0]
        gamma = torch.full((n,), 1.0 / n, dtype=sources.dtype, device=sources.device) if weights is None \
            else torch.tensor(list(weights), dtype=sources.dtype, device=sources.device)
        return (gamma.unsqueeze(1) * clipped).sum(0)
    if fusion == "max_margin":
        pick = (clipped - pivot.unsqueeze(0)).abs().argmax(0)  # first source on ties
        return clipped.gather(0, pick.unsqueeze(0)).squeeze(0)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


class Source:
    """One source model with its own tokenizer and scorer."""

    def __init__(self, model, tokenizer, name: str = ""):
        from .losses import Needs
        from .scoring.lm.engine import LogProbEngine

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.engine = LogProbEngine(Needs(), tokenizer.pad_token_id, "padded")

    def groups(self, pivot_tokenizer, groups) -> list:
        """``groups`` (policy token ids) re-tokenized by this source: decode, encode."""
        return [(_retokenize_prompt(pivot_tokenizer, self.tokenizer, prompt),
                 [_retokenize_completion(pivot_tokenizer, self.tokenizer, c) for c in completions])
                for prompt, completions in groups]


def _retokenize_prompt(src, dst, ids: List[int]) -> List[int]:
    if ids and src.bos_token_id is not None and ids[0] == src.bos_token_id:
        ids = ids[1:]
    return dst(src.decode(ids), add_special_tokens=True)["input_ids"]


def _retokenize_completion(src, dst, ids: List[int]) -> List[int]:
    eos = bool(ids) and src.eos_token_id is not None and ids[-1] == src.eos_token_id
    text = src.decode(ids[:-1] if eos else ids)
    out = dst(text, add_special_tokens=False)["input_ids"]
    if eos and dst.eos_token_id is not None:
        out = out + [dst.eos_token_id]
    return out


class FusedReference:
    """``reference.kind: fused``: answers ``token_logprobs(engine, batch)`` like the other references.

    The returned rows have the policy's completion mask; each row's per-token values are the fused
    sequence value spread evenly over its tokens, so ``.sums`` is the fused sequence log-prob the
    losses read (token-level losses see the fused per-token mean)."""

    has_model = False  # no next-token distributions in the policy's vocabulary (per-token KL)

    def __init__(self, pivot, pivot_tokenizer, sources: Sequence[Source], fusion: str = "mean",
                 weights: Optional[Sequence[float]] = None, clip: bool = True, length_norm: bool = True):
        self.pivot, self.pivot_tokenizer, self.sources = pivot, pivot_tokenizer, list(sources)
        self.fusion, self.weights, self.clip, self.length_norm = fusion, weights, clip, length_norm
        self.model = pivot.model  # the reference cache reads the pivot's config

    @contextlib.contextmanager
    def active(self):
        with self.pivot.active() as model:
            yield model

    def options(self) -> tuple:
        """What the fused value depends on besides the models (part of the reference cache key)."""
        return (self.fusion, self.weights, self.clip, self.length_norm)

    def sequence_values(self, engine, batch):
        """(pivot TokenLogprobs, fused value [R] in the units of ``length_norm``, pivot value [R])."""
        with torch.no_grad():
            lp = self.pivot.token_logprobs(engine, batch)
            lengths = lp.lengths.clamp(min=1).to(lp.token_logps.dtype)
            pivot = lp.sums / lengths if self.length_norm else lp.sums
            values = []
            for source in self.sources:
                slp = source.engine.token_logprobs(source.model, source.groups(self.pivot_tokenizer, batch.groups))
                s = slp.sums.to(pivot.dtype)
                if self.length_norm:
                    s = s / slp.lengths.clamp(min=1).to(pivot.dtype)
                values.append(s.to(pivot.device))
            fused = fuse_sequence_logps(torch.stack(values), pivot, _chosen_rows(batch, pivot.device),
                                        self.fusion, self.weights, self.clip)
        return lp, fused, pivot

    def token_logprobs(self, engine, batch, cache: bool = True) -> TokenLogprobs:
        lp, fused, _ = self.sequence_values(engine, batch)
        lengths = lp.lengths.clamp(min=1).to(lp.token_logps.dtype)
        sequence = fused * lengths if self.length_norm else fused
        per_token = (sequence / lengths).unsqueeze(1) * lp.mask.to(lp.token_logps.dtype)
        return TokenLogprobs(per_token, lp.mask)

    def selected_hidden(self, engine, groups):
        raise ValueError("a fused reference has no next-token distributions in the policy's vocabulary")


def _chosen_rows(batch, device) -> torch.Tensor:
    if batch.kind != "pairs":
        raise ValueError(f"a fused reference clips chosen and rejected completions; {batch.kind} data has neither")
    return (torch.arange(2 * len(batch.groups), device=device) % 2) == 0


# ---- config -------------------------------------------------------------------------------------

def check_fused(config, loss) -> None:
    """The ``reference.kind: fused`` keys (preflight, before any model loads)."""
    r, needs = config.reference, loss.needs
    if r.kind != "fused":
        for key, value, default in (("sources", r.sources, []), ("fusion", r.fusion, "mean"),
                                    ("fusion_weights", r.fusion_weights, None), ("clip", r.clip, True),
                                    ("length_norm", r.length_norm, True)):
            if value != default:
                raise ConfigError(f"reference.{key}: only read with reference.kind: fused (kind is {r.kind!r}); "
                                  "remove it or set kind: fused")
        return
    if not r.sources:
        raise ConfigError("reference.sources: reference.kind 'fused' needs a list of source model paths")
    for i, path in enumerate(r.sources):
        if not isinstance(path, str) or not path:
            raise ConfigError(f"reference.sources[{i}]: must be a model path or hub id, got {path!r}")
        if not os.path.exists(os.path.expanduser(path)) and not looks_like_hub_id(path):
            raise ConfigError(f"reference.sources[{i}]: no such directory: {path} (a local model directory, "
                              "or a hub id)")
    if needs.data != "pairs":
        raise ConfigError(f"reference.kind 'fused' clips chosen and rejected completions; loss {loss.name!r} "
                          f"trains on {needs.data} (use a pairwise loss, e.g. sigmoid_norm or dpo)")
    if "ref_kl" in needs.token_stats:
        raise ConfigError(f"reference.kind 'fused' cannot serve loss {loss.name!r}: it reads per-token KL to "
                          "the reference, and the sources have other vocabularies")
    if r.sync_every:
        raise ConfigError("reference.sync_every: a fused reference is not a copy of the policy; remove it")
    if config.data.curriculum:
        raise ConfigError("data.curriculum: its stages replace the reference with the policy, which a fused "
                          "reference is not; remove one of them")
    if r.fusion_weights is not None:
        if r.fusion != "mean":
            raise ConfigError(f"reference.fusion_weights: only read with fusion 'mean' (fusion is {r.fusion!r})")
        w = r.fusion_weights
        if len(w) != len(r.sources):
            raise ConfigError(f"reference.fusion_weights: {len(w)} weights for {len(r.sources)} sources")
        if any(x < 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
            raise ConfigError(f"reference.fusion_weights: must be >= 0 and sum to 1, got {list(w)}")


def build_fused(config, pivot, accelerator):
    """The fused reference of ``config.reference`` around ``pivot`` (the initial-policy reference)."""
    from .models import load_named, load_tokenizer

    r = config.reference
    if accelerator is not None and _sharded(accelerator):
        raise ConfigError("reference.kind 'fused': the source models are not sharded; use DDP or ZeRO-1/2")
    try:
        pivot_tokenizer = load_tokenizer(config.model.name_or_path, config.model.trust_remote_code,
                                         config.model.revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: the fused reference needs the policy's tokenizer: {err}") from None
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    sources = []
    for i, path in enumerate(r.sources):
        tokenizer, model = load_named(path, config.model, f"reference.sources[{i}]", tokenizer=True)
        sources.append(Source(model.to(device), tokenizer, path))
    return FusedReference(pivot, pivot_tokenizer, sources, r.fusion, r.fusion_weights, r.clip, r.length_norm)


def _sharded(accelerator) -> bool:
    from . import distributed as dist

    return dist.shards_parameters(accelerator)
