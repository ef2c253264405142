"""A precomputed reference for denoisers: ``e_ref`` per (example, draw), computed once.

The diffusion scorer draws the noise and timestep of an example from ``(seed, example index,
draw)`` (:mod:`.noise`), so the reference's per-sample errors ``e_ref(x) = mean_D (eps_ref(x_t, t, c)
- target)^2`` of every visit a run will make are known before it starts. With
``reference.precompute: true`` they are computed once for draws ``0..E-1`` (E = the run's epochs;
evaluation uses draw 0) with the same batching code the training uses, stored in a safetensors file
under a content hash, and the reference forward is skipped at every step (the reference denoiser is
released). The hash covers the reference weights and config, the images and captions of every
example, the scorer's seed, timestep range and prediction type, and the draws: any change
recomputes. Only ``diffusion.x_t: forward`` (forward noising) is cacheable: an inverted ``x_t``
depends on the trained policy. With several processes each computes the whole table (the file is
written atomically, so concurrent writers are safe); it is not split over the processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file

from ...errors import ConfigError
from ...io import save_safetensors_atomic
from ...paths import safe_join

logger = logging.getLogger("dpokit")

FORMAT_VERSION = "diffusion-1"


def fingerprint_images(examples: Sequence) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for ex in examples:
        digest.update(f"{ex.index}|{ex.caption}|{tuple(ex.images.shape)}".encode())
        digest.update(ex.images.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class PrecomputedDenoisingReference:
    """Reference errors looked up by (example index, draw); :meth:`errors` gives [B, M]."""

    has_model = False

    def __init__(self, store: Dict[Tuple[int, int], torch.Tensor], path: Optional[str] = None, hit: bool = False):
        self.store = store
        self.path = path
        self.hit = hit

    def errors(self, batch) -> torch.Tensor:
        rows = []
        m = batch.images.shape[1]
        for index, draw in zip(batch.indices.tolist(), batch.draws.tolist()):
            value = self.store.get((int(index), int(draw)))
            if value is None:
                raise KeyError(f"example {index}, draw {draw} is not in the precomputed reference {self.path} "
                               "(it covers draws 0..epochs-1 of the run's examples)")
            rows.append(torch.nn.functional.pad(value, (0, m - value.numel())))
        return torch.stack(rows).to(batch.images.device)

    def to(self, device) -> "PrecomputedDenoisingReference":
        return self  # looked up on the CPU, moved per batch

    @staticmethod
    def save(store: Dict[Tuple[int, int], torch.Tensor], path: str) -> None:
        keys = sorted(store)
        width = max(store[k].numel() for k in keys)
        values = torch.zeros(len(keys), width)
        for row, key in enumerate(keys):
            values[row, :store[key].numel()] = store[key]
        tensors = {"keys": torch.tensor(keys, dtype=torch.long), "values": values,
                   "counts": torch.tensor([store[k].numel() for k in keys], dtype=torch.long)}
        save_safetensors_atomic(tensors, path)

    @staticmethod
    def load(path: str) -> Dict[Tuple[int, int], torch.Tensor]:
        data = load_file(path)
        return {(int(k[0]), int(k[1])): v[:int(n)].clone()
                for k, v, n in zip(data["keys"].tolist(), data["values"], data["counts"].tolist())}


def fingerprint_denoiser(model) -> str:
    """Hash of the denoiser's weights (LoRA weights left out: they do not act on an adapter-disabled
    reference) and of its config."""
    import json

    skip = "lora_" if hasattr(model, "disable_adapter") else None
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if skip and skip in name:
            continue
        digest.update(name.encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    values = dict(config) if isinstance(config, dict) else (config.to_dict() if hasattr(config, "to_dict") else {})
    digest.update(json.dumps({k: v for k, v in values.items() if not k.startswith("_")}, sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()


def fingerprint_scheduler(scheduler) -> str:
    """The scheduler's class and config (betas, schedule, number of timesteps, ...)."""
    import json

    config = getattr(scheduler, "config", None)
    values = dict(config) if config is not None else {}
    return type(scheduler).__name__ + json.dumps({k: v for k, v in values.items() if not k.startswith("_")},
                                                 sort_keys=True, default=str)


def fingerprint_conditions(encode, examples: Sequence) -> str:
    """Hash of the conditions ``encode`` gives every distinct caption: it covers the text encoder's
    weights and tokenizer, or the order of ``diffusion.classes``."""
    digest = hashlib.blake2b(digest_size=16)
    captions = sorted({ex.caption for ex in examples})
    for start in range(0, len(captions), 64):
        chunk = captions[start:start + 64]
        for name, tensor in sorted(encode(chunk).items()):
            digest.update(name.encode() + str(tensor.dtype).encode() + repr(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(scorer, reference_model, examples: Sequence, draws: Sequence[int], encode=None) -> str:
    parts = [FORMAT_VERSION, fingerprint_denoiser(reference_model), fingerprint_images(examples),
             fingerprint_scheduler(scorer.scheduler),
             fingerprint_conditions(encode, examples) if encode is not None else "",
             repr((scorer.seed, scorer.timestep_range, scorer.prediction_type, list(draws)))]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


@torch.no_grad()
def precompute(scorer, reference, examples: Sequence, draws: Sequence[int], encode, batch_size: int,
               cache_dir: str, device=None) -> PrecomputedDenoisingReference:
    """``e_ref`` of every example at every draw, computed with ``scorer.errors`` (policy = the
    reference itself, its result discarded) or read from ``cache_dir``."""
    from ...data.images import collate_images

    if getattr(scorer, "inversion", None) is not None:
        raise ConfigError("reference.precompute: an inverted x_t (diffusion.x_t ddim_inversion / renoise) depends "
                          "on the trained denoiser; precompute needs diffusion.x_t: forward")
    model = reference.model if hasattr(reference, "model") else reference
    examples = list(examples)
    key = cache_key(scorer, model, examples, draws, encode)
    path = safe_join(cache_dir, f"reference-{key}.safetensors")
    if os.path.exists(path):
        try:
            store = PrecomputedDenoisingReference.load(path)
            if all((ex.index, d) in store for ex in examples for d in draws):
                logger.info("reference errors: reusing cache %s", path)
                return PrecomputedDenoisingReference(store, path, hit=True)
        except Exception as err:  # a damaged file: recompute it
            logger.warning("reference errors: cache %s is unreadable (%s); recomputing", path, err)
    logger.info("reference errors: computing once for %d examples x %d draws -> %s", len(examples), len(draws), path)
    store: Dict[Tuple[int, int], torch.Tensor] = {}
    examples = list(examples)
    for draw in draws:
        for start in range(0, len(examples), max(1, batch_size)):
            chunk = examples[start:start + batch_size]
            batch = collate_images(chunk, [draw] * len(chunk), encode)
            if device is not None:
                batch = batch.to(device)
            with _reference_model(reference) as ref_model:
                errors = scorer.reference_forward(ref_model, batch)
            for ex, row in zip(chunk, errors.float().cpu()):
                store[(ex.index, draw)] = row[:ex.images.shape[0]].clone()
    os.makedirs(cache_dir, exist_ok=True)
    PrecomputedDenoisingReference.save(store, path)
    return PrecomputedDenoisingReference(store, path)


def _reference_model(reference):
    import contextlib

    if hasattr(reference, "active"):
        return reference.active()
    return contextlib.nullcontext(reference)


def run_draws(config, n_train: int, world_size: int = 1) -> List[int]:
    """The draws (epochs) a run visits: ``0..epochs-1``, or enough for ``train.max_steps`` when each of
    ``world_size`` processes takes ``train.batch_size`` of the ``n_train`` training examples a step."""
    import math

    t = config.train
    epochs = int(t.epochs)
    if t.max_steps:
        per_process = math.ceil(n_train / max(1, world_size))
        per_epoch = max(1, math.ceil(math.ceil(per_process / max(1, t.batch_size)) / max(1, t.grad_accum)))
        epochs = math.ceil(t.max_steps / per_epoch) + 1
    return list(range(max(1, epochs)))
