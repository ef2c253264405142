"""VAE latents of the training images, computed once and cached under the run directory.

A pipeline with a ``vae/`` folder (a diffusers ``AutoencoderKL``) trains its denoiser on latents:

    z = (sample_or_mean(vae.encode(x).latent_dist) - shift_factor) * scaling_factor

with ``shift_factor`` 0 when the VAE has none (SD1.5, SDXL), as the diffusers training scripts
scale latents (``latents * vae.config.scaling_factor``; SD3: ``(latents - shift_factor) *
scaling_factor``). Pipelines without a VAE train in pixel space, on the images as loaded.

**Which latent.** The diffusers Diffusion-DPO scripts (``train_diffusion_dpo.py``, SDXL variant) and
the Salesforce ``train.py`` draw ``vae.encode(pixels).latent_dist.sample()`` afresh at every step,
from the global random state. Here the posterior (its ``mean`` and ``std``) is computed **once** per
unique image and cached; ``diffusion.latent_sample: sample`` (default) then takes **one seeded draw**
``mean + std * n``, ``n ~ N(0, I)`` from a generator seeded by ``(train.seed, image hash)``, so each
image's latent comes from the same distribution the scripts sample from, and is the same on every
visit, in every process and after a resume. ``mean`` takes the posterior mean (the mode) instead. The
one difference from the scripts: they redraw per visit, here a draw is fixed per image (for SD VAEs the
posterior ``std`` is small next to the mean, so the two agree closely).

**The cache.** ``<output_dir>/latent_cache/<vae fingerprint>/shard-NNNNN.safetensors`` holds
``<image hash>.mean`` and ``<image hash>.std`` (float32). The image hash is a blake2b digest of the
pixel tensor the VAE would see (after resizing, float32, with its shape); the VAE fingerprint hashes
its config, its weights and the dtype it encodes in. A new VAE, another image size or another image
gives new keys; nothing stale is reused. A fill writes the images it encoded as new shards of up to
``SHARD_SIZE`` (1024) images each, so an interrupted fill keeps its finished shards and a resumed or
repeated run (same ``output_dir``) encodes nothing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ...diffusion_models import load_frozen_part
from ...errors import ConfigError

logger = logging.getLogger("dpokit")

CACHE_DIR = "latent_cache"
SHARD_SIZE = 1024  # images per cache shard
SAMPLE_MODES = ("sample", "mean")


def load_vae(root: str, dtype: Optional[torch.dtype] = None):
    """The pipeline's ``vae/`` (``AutoencoderKL``, safetensors), frozen; None when there is none."""
    vae = load_frozen_part(root, "vae", "AutoencoderKL", dtype,
                           " to encode latents (set diffusion.vae: none to train in pixel space)")
    if vae is not None:
        check_scaling(vae)
    return vae


def check_scaling(vae) -> None:
    if getattr(vae.config, "latents_mean", None) is not None or getattr(vae.config, "latents_std", None) is not None:
        raise ConfigError("diffusion.vae: this VAE sets latents_mean/latents_std (per-channel normalisation); "
                          "dpokit scales latents by shift_factor and scaling_factor only")


def scale_latents(raw: torch.Tensor, vae) -> torch.Tensor:
    """``(raw - shift_factor) * scaling_factor`` (shift 0 when the VAE has none)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (raw - shift) * float(vae.config.scaling_factor)


def unscale_latents(latents: torch.Tensor, vae) -> torch.Tensor:
    """The inverse of :func:`scale_latents`: what ``vae.decode`` takes."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / float(vae.config.scaling_factor) + shift


def image_key(pixels: torch.Tensor) -> str:
    """Content hash of one image as the VAE sees it ([C, H, W] float32, shape included)."""
    data = pixels.detach().to(torch.float32).contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def vae_fingerprint(vae) -> str:
    """Hash of the VAE's config, weights and dtype: the cache folder's name."""
    digest = hashlib.blake2b(digest_size=12)
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    digest.update(str(next(vae.parameters()).dtype).encode())
    return digest.hexdigest()


def sample_seed(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{int(seed)}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def posterior_latent(mean: torch.Tensor, std: torch.Tensor, key: str, seed: int, mode: str, vae) -> torch.Tensor:
    """The scaled latent of one image from its cached posterior (``mode`` sample: seeded draw)."""
    if mode not in SAMPLE_MODES:
        raise ConfigError(f"diffusion.latent_sample: {mode!r} is not one of {', '.join(SAMPLE_MODES)}")
    raw = mean
    if mode == "sample":
        generator = torch.Generator().manual_seed(sample_seed(seed, key))
        raw = mean + std * torch.randn(tuple(mean.shape), generator=generator, dtype=mean.dtype)
    return scale_latents(raw, vae)


class LatentCache:
    """The posteriors of one VAE, in safetensors shards under ``folder``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.entries: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._load()

    def _load(self) -> None:
        from safetensors.torch import load_file

        for path in sorted(glob.glob(os.path.join(self.folder, "shard-*.safetensors"))):
            tensors = load_file(path)
            for name, tensor in tensors.items():
                key, _, part = name.rpartition(".")
                if part == "mean" and f"{key}.std" in tensors:
                    self.entries[key] = (tensor, tensors[f"{key}.std"])

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.entries[key]

    def add(self, new: Dict[str, Tuple[torch.Tensor, torch.Tensor]]) -> Optional[str]:
        """Store ``new`` as one more shard (written to a temporary name, then renamed)."""
        if not new:
            return None
        from ...io import save_safetensors_atomic

        os.makedirs(self.folder, exist_ok=True)
        number = len(glob.glob(os.path.join(self.folder, "shard-*.safetensors")))
        path = os.path.join(self.folder, f"shard-{number:05d}.safetensors")
        tensors = {}
        for key, (mean, std) in new.items():
            tensors[f"{key}.mean"] = mean.contiguous()
            tensors[f"{key}.std"] = std.contiguous()
        save_safetensors_atomic(tensors, path)
        self.entries.update(new)
        return path


@torch.no_grad()
def encode_posteriors(vae, pixels: Sequence[torch.Tensor], batch_size: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(mean, std)`` of ``vae.encode(x).latent_dist`` for each image [C, H, W] of ``pixels``."""
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    batch_size = max(1, int(batch_size))
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = torch.stack(list(pixels[start:start + batch_size])).to(device, dtype)
        dist = vae.encode(chunk).latent_dist
        for mean, std in zip(dist.mean, dist.std):
            out.append((mean.float().cpu(), std.float().cpu()))
    return out


def encode_examples(examples: Sequence[Any], vae, output_dir: str, seed: int, mode: str = "sample",
                    batch_size: int = 16, write: bool = True) -> Dict[str, int]:
    """Replace each example's ``images`` [M, C, H, W] (pixels in [-1, 1]) by its scaled latents.

    The VAE encodes only images the cache (``output_dir/latent_cache/<fingerprint>``) does not hold,
    each unique image once; ``write`` stores them as a new shard (the main process). Returns
    ``{"images": n, "unique": u, "encoded": e, "cached": c}``."""
    if mode not in SAMPLE_MODES:
        raise ConfigError(f"diffusion.latent_sample: {mode!r} is not one of {', '.join(SAMPLE_MODES)}")
    cache = LatentCache(os.path.join(output_dir, CACHE_DIR, vae_fingerprint(vae)))
    keys: List[List[str]] = []
    missing: Dict[str, torch.Tensor] = {}
    for ex in examples:
        row = [image_key(image) for image in ex.images]
        keys.append(row)
        for key, image in zip(row, ex.images):
            if key not in cache and key not in missing:
                missing[key] = image
    cached = len({k for row in keys for k in row}) - len(missing)
    todo = list(missing.items())
    for start in range(0, len(todo), SHARD_SIZE):  # one shard per SHARD_SIZE images: a crash keeps the done part
        part = todo[start:start + SHARD_SIZE]
        new = dict(zip([k for k, _ in part], encode_posteriors(vae, [v for _, v in part], batch_size)))
        if write:
            cache.add(new)
        else:
            cache.entries.update(new)
    for ex, row in zip(examples, keys):
        ex.images = torch.stack([posterior_latent(*cache.get(k), k, seed, mode, vae) for k in row])
    report = {"images": sum(len(r) for r in keys), "unique": len(missing) + cached, "encoded": len(missing),
              "cached": cached}
    logger.info("latents: %(images)d images, %(unique)d unique, %(encoded)d encoded, %(cached)d from the cache",
                report)
    return report


def check_latent_channels(vae, denoiser) -> None:
    """The denoiser must take the VAE's latent channels."""
    base = denoiser.get_base_model() if hasattr(denoiser, "get_base_model") else denoiser
    want = getattr(getattr(base, "config", None), "in_channels", None)
    have = int(vae.config.latent_channels)
    if want is not None and int(want) != have:
        raise ConfigError(f"diffusion.vae: the VAE gives {have}-channel latents but the denoiser takes {want} "
                          "input channels (set diffusion.vae: none to train on pixels)")
