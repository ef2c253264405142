"""Where reference log-probs come from.

* :class:`ModelReference`: a frozen model in memory (a copy of the initial policy, or a path).
* :class:`AdapterDisabledReference`: the LoRA policy itself with its adapters disabled, so the
  base weights are not held twice.
* :class:`CachedReference`: reference log-probs computed once over the dataset and stored on disk
  under a content hash of (reference weights, tokenized dataset, engine version); every later
  epoch and run with the same hash reads them instead of running the reference model, and the
  reference model is released from memory. Any change of weights, data or tokenization changes
  the hash and recomputes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from .logprobs import TokenLogprobs, scatter_rows

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "1"


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


def fingerprint_model(model: torch.nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_examples(examples: Iterable) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for ex in examples:
        digest.update(json.dumps([ex.index, ex.prompt_ids, ex.completions]).encode())
    return digest.hexdigest()


class CachedReference:
    """Reference log-probs looked up by dataset position; see the module docstring."""

    has_model = False

    def __init__(self, store: Dict[int, List[torch.Tensor]], path: Optional[str] = None):
        self.store = store
        self.path = path

    @classmethod
    def build(cls, inner: ModelReference, engine, examples: Sequence, cache_dir: str, batch_size: int = 8,
              model_fingerprint: Optional[str] = None) -> "CachedReference":
        from .data.collate import collate

        key = hashlib.blake2b(
            "|".join([CACHE_FORMAT_VERSION, model_fingerprint or fingerprint_model(inner.model),
                      fingerprint_examples(examples)]).encode(),
            digest_size=16,
        ).hexdigest()
        path = os.path.join(cache_dir, f"reference-{key}.safetensors")
        if os.path.exists(path):
            logger.info("reference log-probs: reusing cache %s", path)
            return cls(_load_store(path), path)
        logger.info("reference log-probs: computing once for %d examples -> %s", len(examples), path)
        store: Dict[int, List[torch.Tensor]] = {}
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = collate(chunk, "pairs" if len(chunk[0].completions) == 2 else "unpaired")
            lp = inner.token_logprobs(engine, batch)
            per_group = len(chunk[0].completions)
            for g, ex in enumerate(chunk):
                store[ex.index] = [
                    lp.token_logps[g * per_group + j][lp.mask[g * per_group + j]].detach().float().cpu()
                    for j in range(per_group)
                ]
        os.makedirs(cache_dir, exist_ok=True)
        _save_store(store, path)
        return cls(store, path)

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


def _save_store(store: Dict[int, List[torch.Tensor]], path: str) -> None:
    keys = sorted(store)
    per = len(store[keys[0]]) if keys else 0
    rows = [t for k in keys for t in store[k]]
    tensors = {
        "index": torch.tensor(keys, dtype=torch.long),
        "lengths": torch.tensor([len(t) for t in rows], dtype=torch.long),
        "flat": torch.cat(rows) if rows else torch.zeros(0),
        "per_example": torch.tensor([per], dtype=torch.long),
    }
    tmp = path + ".tmp"
    save_file(tensors, tmp)
    os.replace(tmp, path)


def _load_store(path: str) -> Dict[int, List[torch.Tensor]]:
    data = load_file(path)
    per = int(data["per_example"][0])
    pieces = torch.split(data["flat"], data["lengths"].tolist())
    store = {}
    for n, key in enumerate(data["index"].tolist()):
        store[key] = list(pieces[n * per:(n + 1) * per])
    return store
