"""Where reference log-probs come from.

* :class:`ModelReference`: a frozen model in memory (a copy of the initial policy, or a path).
* :class:`AdapterDisabledReference`: the LoRA policy itself with its adapters disabled, so the
  base weights are not held twice.
* :class:`CachedReference`: reference log-probs computed once over the dataset and stored on disk
  under a content hash of (reference weights, reference model config, tokenized dataset, cache
  format version); every later epoch and run with the same hash reads them instead of running the
  reference model, and the reference model is released from memory. Any change of weights, of a
  config value that changes the forward pass (rope, norms, logit soft-capping...), of the data or
  of its tokenization (the hash covers the token ids themselves) changes the hash and recomputes.
  The layout and chunk size are not part of the key: they change no value beyond float rounding.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from safetensors.torch import load_file

from . import distributed as dist
from .data.collate import collate
from .errors import ConfigError
from .io import save_safetensors_atomic
from .models import load_named
from .paths import safe_join
from .scoring.lm.projection import TokenLogprobs, scatter_rows

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "2"


class ModelReference:
    has_model = True

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @contextlib.contextmanager
    def active(self):
        yield self.model

    def token_logprobs(self, engine, batch, cache: bool = True) -> TokenLogprobs:
        with torch.no_grad(), self.active() as model:
            return engine.token_logprobs(model, batch.groups)

    def selected_hidden(self, engine, groups):
        with torch.no_grad(), self.active() as model:
            hidden, _, _, lm_head = engine.hidden(model, groups)
        return hidden, lm_head


class AdapterDisabledReference(ModelReference):
    """The PEFT policy with adapters disabled (and in eval mode) while the reference is computed."""

    def __init__(self, peft_model):
        if not hasattr(peft_model, "disable_adapter"):
            raise TypeError("reference 'lora_disabled' needs a PEFT (LoRA) policy")
        self.model = peft_model

    @contextlib.contextmanager
    def active(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)


def fingerprint_model(model: torch.nn.Module, skip: Sequence[str] = ()) -> str:
    """Hash of every tensor of the state dict (names, dtypes, bytes); names containing one of
    ``skip`` are left out."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if any(part in name for part in skip):
            continue
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# config entries that name or describe a model but do not change its forward pass
_COSMETIC_CONFIG_KEYS = {"_name_or_path", "transformers_version", "architectures", "use_cache", "_attn_implementation",
                         "_attn_implementation_autoset", "attn_implementation", "_commit_hash", "torch_dtype", "dtype",
                         "output_attentions", "output_hidden_states", "return_dict", "pad_token_id", "bos_token_id",
                         "eos_token_id", "id2label", "label2id", "tie_word_embeddings"}


def fingerprint_config(model: torch.nn.Module) -> str:
    """Hash of the model config entries that can change its outputs (weights are hashed apart;
    dtype is in the weights' hash, and tied embeddings show in the state dict)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        return "no-config"
    values = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    values = {k: v for k, v in values.items() if k not in _COSMETIC_CONFIG_KEYS}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


IMAGE_FIELDS = ("pixel_values", "image_sizes", "image_grid_thw")  # vision examples: the images are data too


def fingerprint_examples(examples: Iterable) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for ex in examples:
        digest.update(json.dumps([ex.index, ex.prompt_ids, ex.completions]).encode())
        for name in IMAGE_FIELDS:
            value = getattr(ex, name, None)
            if value is not None:
                digest.update(name.encode() + repr(tuple(value.shape)).encode())
                digest.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class CachedReference:
    """Reference log-probs looked up by dataset position; see the module docstring."""

    has_model = False

    def __init__(self, store: Dict[int, List[torch.Tensor]], path: Optional[str] = None, hit: bool = False):
        self.store = store
        self.path = path
        self.hit = hit  # True when read from disk, False when computed by this process

    @staticmethod
    def cache_key(model: torch.nn.Module, examples: Sequence, model_fingerprint: Optional[str] = None,
                  adapters_disabled: bool = False) -> str:
        """The content hash the cache file is named by (see the module docstring). With
        ``adapters_disabled`` (a LoRA policy used as its own reference) the adapter weights,
        which do not act on the reference, are left out of the hash."""
        weights = model_fingerprint or fingerprint_model(model, skip=("lora_",) if adapters_disabled else ())
        parts = [CACHE_FORMAT_VERSION, weights, fingerprint_config(model), fingerprint_examples(examples)]
        return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()

    @classmethod
    def build(cls, inner: ModelReference, engine, examples: Sequence, cache_dir: str, batch_size: int = 8,
              model_fingerprint: Optional[str] = None, shard: bool = True) -> "CachedReference":
        """Compute (or reuse) the reference log-probs of ``examples``.

        With several processes and ``shard`` (the default) the main process decides whether a usable
        cache exists (so every process takes the same path), each process computes a contiguous share
        with the same number of forwards (forwards are collective under FSDP, ZeRO-3 and for a LoRA
        policy inside DDP), the shares are gathered and the main process writes the file. With one
        process, or ``shard=False``, this process computes everything itself."""
        sharded = shard and dist.is_distributed()
        path, store = None, None
        if dist.is_main_process() or not sharded:
            key = cls.cache_key(inner.model, examples, model_fingerprint,
                                adapters_disabled=isinstance(inner, AdapterDisabledReference))
            path = safe_join(cache_dir, f"reference-{key}.safetensors")
            store = _read_cache(path, examples)
        if sharded:
            path = dist.broadcast_object(path)
            if dist.broadcast_object(store is not None):
                store = dist.broadcast_object(store)
        if store is not None:
            logger.info("reference log-probs: reusing cache %s", path)
            return cls(store, path, hit=True)
        if not sharded:
            logger.info("reference log-probs: computing once for %d examples -> %s", len(examples), path)
            store = _compute(inner, engine, list(examples), batch_size, len(examples))
            os.makedirs(cache_dir, exist_ok=True)
            save_store(store, path)
            return cls(store, path)
        lo, hi = dist.shard_bounds(len(examples))
        per_process = math.ceil(len(examples) / dist.world_size())
        logger.info("reference log-probs: computing %d examples on %d processes -> %s", len(examples),
                    dist.world_size(), path)
        computed = _compute(inner, engine, list(examples[lo:hi]), batch_size, per_process, filler=examples[:1])
        merged: Dict[int, List[torch.Tensor]] = {}
        for part in dist.gather_objects([computed]):
            merged.update(part)
        if dist.is_main_process():
            os.makedirs(cache_dir, exist_ok=True)
            save_store(merged, path)
        dist.barrier()
        return cls(merged, path)

    def token_logprobs(self, engine, batch, cache: bool = True) -> TokenLogprobs:
        if not cache:
            raise ValueError("precomputed reference log-probs cover the dataset's own completions only")
        rows: List[torch.Tensor] = []
        for i in batch.index.tolist():
            if i not in self.store:
                raise KeyError(f"example {i} is not in the reference cache {self.path}")
            rows.extend(self.store[i])
        flat = torch.cat(rows) if rows else torch.zeros(0)
        token_logps, mask = scatter_rows(flat, [len(r) for r in rows])
        return TokenLogprobs(token_logps, mask)

    def to(self, device) -> "CachedReference":
        self.store = {k: [t.to(device) for t in v] for k, v in self.store.items()}
        return self


def weights_fingerprint(source: str, model: Optional[torch.nn.Module] = None, revision: Optional[str] = None) -> str:
    """Reference-cache fingerprint of a model that is (or will be) sharded, on the main process only
    (other processes get ``""``; the main process's key is broadcast). A local directory: the bytes
    of its weight files, which is what every process loads. A hub id: the id and revision. Without
    either, the in-memory weights (:func:`fingerprint_model`)."""
    if not dist.is_main_process():
        return ""
    digest = hashlib.blake2b(digest_size=16)
    if source and os.path.isdir(source):
        files = sorted(f for f in os.listdir(source) if f.endswith((".safetensors", ".bin")))
        for name in files:
            digest.update(name.encode())
            with open(os.path.join(source, name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
        if files:
            return "files-" + digest.hexdigest()
    if source and not os.path.exists(source):
        return "hub-" + hashlib.blake2b(f"{source}@{revision or 'main'}".encode(), digest_size=16).hexdigest()
    return fingerprint_model(model)


def fused_fingerprint(fused) -> str:
    """Cache-key weights of a fused reference (:mod:`dpokit.reference_fusion`): the pivot, every
    source (weights, config, tokenizer vocabulary) and the fusion options."""
    parts = [fingerprint_model(fused.pivot.model)]
    for s in fused.sources:
        parts += [fingerprint_model(s.model), fingerprint_config(s.model),
                  json.dumps(sorted(s.tokenizer.get_vocab().items()))]
    parts.append(repr(fused.options()))
    return "fused-" + hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def build_reference(config, needs, policy, accelerator, scorer, examples: Sequence, policy_from_path: bool = True,
                    external_parameters=None):
    """The reference a run's loss reads, from ``config.reference`` (None for a reference-free loss).

    ``kind: auto`` is ``path`` when a path is given, ``lora_disabled`` with LoRA, else ``copy`` (a frozen
    copy of the initial policy). FSDP and ZeRO-3 get a sharded frozen copy, loaded afresh when the
    policy came from a path (a ZeRO-3 policy may be partitioned already). With ``precompute`` the
    reference log-probs of ``examples`` are computed once (split over the processes), cached on
    disk under a content hash, and the reference model is released."""
    r = config.reference
    if not needs.reference:
        return None
    kind = r.kind
    if kind in ("auto", "fused"):  # fused: the initial pivot is what auto would give (dpokit.reference_fusion)
        kind = "path" if r.path else ("lora_disabled" if config.lora.enabled else "copy")
    sharded = dist.shards_parameters(accelerator)
    if sharded and "ref_kl" in needs.token_stats:
        raise ConfigError("this loss reads per-token KL to the reference from its hidden states, which needs an "
                          "unsharded reference: use DDP or ZeRO-1/2 for it")
    if sharded and r.sync_every:
        raise ConfigError("reference.sync_every (TR-DPO) updates the reference from the policy in place, which "
                          "needs unsharded models: use DDP or ZeRO-1/2 for it")
    fingerprint = None
    if kind == "lora_disabled":
        reference = AdapterDisabledReference(policy)
    else:
        if kind == "path":
            frozen = load_named(r.path, config.model, "reference.path", layout=config.train.layout)
        elif sharded and policy_from_path:
            frozen = load_named(config.model.name_or_path, config.model, "model.name_or_path",
                                layout=config.train.layout)
        else:
            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            frozen = copy.deepcopy(base)
        if sharded and r.precompute:  # the cache key hashes the weights, which sharding splits
            fingerprint = weights_fingerprint(r.path if kind == "path" else config.model.name_or_path, frozen,
                                              config.model.revision)
        reference = ModelReference(dist.prepare_frozen(accelerator, frozen, external_parameters))
    if r.kind == "fused":
        from .reference_fusion import build_fused

        reference = build_fused(config, reference, accelerator)
        fingerprint = fused_fingerprint(reference) if r.precompute else None
    if not r.precompute:
        return reference
    cache_dir = r.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "dpokit", "reference")
    if not sharded or kind == "lora_disabled":
        policy.to(accelerator.device)
    if hasattr(scorer, "precompute_reference"):  # denoisers: errors per (example, draw) (scoring.diffusion.cached)
        cached = scorer.precompute_reference(config, reference, list(examples), cache_dir, accelerator.device,
                                             accelerator.num_processes)
        del reference
        return cached
    with torch.no_grad():
        cached = CachedReference.build(reference, scorer, list(examples), cache_dir, config.train.batch_size,
                                       fingerprint)
    del reference  # the reference weights are no longer needed in memory
    return cached.to(accelerator.device)


def save_store(store: Dict[int, List[torch.Tensor]], path: str) -> None:
    """Write reference log-probs ``{example index: [per-completion token log-probs]}`` to ``path``
    (safetensors, atomically: a temporary file per process, then a rename)."""
    keys = sorted(store)
    rows = [t for k in keys for t in store[k]]
    tensors = {
        "index": torch.tensor(keys, dtype=torch.long),
        "lengths": torch.tensor([len(t) for t in rows], dtype=torch.long),
        "flat": torch.cat(rows) if rows else torch.zeros(0),
        "completions": torch.tensor([len(store[k]) for k in keys], dtype=torch.long),
    }
    save_safetensors_atomic(tensors, path)  # ranks may write the same cache at once


def load_store(path: str) -> Dict[int, List[torch.Tensor]]:
    """Read what :func:`save_store` wrote."""
    data = load_file(path)
    pieces = torch.split(data["flat"], data["lengths"].tolist())
    store, row = {}, 0
    for key, count in zip(data["index"].tolist(), data["completions"].tolist()):
        store[key] = list(pieces[row:row + count])
        row += count
    if row != len(pieces):
        raise ValueError(f"{path}: {len(pieces)} rows stored but the index accounts for {row}")
    return store


def _read_cache(path: str, examples: Sequence) -> Optional[Dict[int, List[torch.Tensor]]]:
    """The stored log-probs at ``path`` if the file is readable and covers every example, else None."""
    if not os.path.exists(path):
        return None
    try:
        store = load_store(path)
    except Exception as err:  # a damaged file (e.g. a disk that filled up): recompute it
        logger.warning("reference log-probs: cache %s is unreadable (%s); recomputing", path, err)
        return None
    if not all(ex.index in store for ex in examples):
        logger.warning("reference log-probs: cache %s lacks some examples; recomputing", path)
        return None
    return store


def _compute(inner, engine, examples: List, batch_size: int, total: int, filler: Sequence = ()):
    """Per-completion reference log-probs of ``examples`` in ``ceil(total / batch_size)`` forwards
    (at least one); a process whose share ends early runs ``filler`` and discards the result, so
    every process runs the same number of forwards."""
    store: Dict[int, List[torch.Tensor]] = {}
    for b in range(max(1, math.ceil(total / batch_size))):
        chunk = examples[b * batch_size:(b + 1) * batch_size]
        keep = bool(chunk)
        chunk = chunk or list(filler)
        if not chunk:
            continue
        batch = getattr(engine, "collate", collate)(chunk, "pairs" if all(len(ex.completions) == 2 for ex in chunk)
                                                    else "unpaired")  # a vision engine's collate keeps the images
        with torch.no_grad():
            lp = inner.token_logprobs(engine, batch)
        if not keep:
            continue
        row = 0
        for ex in chunk:
            store[ex.index] = []
            for _ in ex.completions:
                store[ex.index].append(lp.token_logps[row][lp.mask[row]].detach().float().cpu())
                row += 1
    return store
