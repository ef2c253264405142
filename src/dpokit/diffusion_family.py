"""``model.kind: diffusion``: a diffusers denoiser trained on image preference data by ``dpokit train``.

* model: ``model.name_or_path`` is a local pipeline-style directory (:mod:`dpokit.diffusion_models`);
  the denoiser trains (all weights, or LoRA on its attention projections with ``lora.enabled``);
  the scheduler and a frozen condition encoder (text encoder, class list or none) come with it;
* data: image pairs (``caption``, ``chosen``/``rejected``, or Pick-a-Pic ``jpg_0``/``jpg_1``/``label_0``)
  or ranked image lists (``images``, ``scores``), read by :mod:`dpokit.data.images`; a pairwise loss
  on lists gets the pairs ``data.pair_builder`` builds (:mod:`dpokit.data.image_lists`); for a video
  denoiser (``WanTransformer3DModel``) clip pairs, clips with per-segment labels or ranked clip lists,
  read by :mod:`dpokit.data.video`;
* scoring: the diffusion scorer (:mod:`dpokit.scoring.diffusion`); the noise of an example is drawn
  per (seed, example, epoch), and evaluation uses draw 0;
* reference: ``copy`` (a frozen copy of the initial denoiser) or ``lora_disabled`` (the LoRA
  denoiser with its adapters off), as :mod:`dpokit.reference` builds them; ``reference.precompute``
  computes its errors once per (example, draw) (:mod:`dpokit.scoring.diffusion.cached`);
* output: ``final/`` holds the trained denoiser in the input's layout (LoRA merged; the adapter
  itself under ``final/adapter``) next to copies of the other folders (scheduler, text encoder, ...);
  ``samples/diffusion/`` holds policy vs reference samples from fixed noise (images, or the first,
  middle and last frames of clips) that ``dpokit report`` shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from .data.build import DataPlan
from .errors import ConfigError
from .paths import safe_join

logger = logging.getLogger("dpokit")


class DiffusionAssets:
    """What the diffusion scorer and the batches need besides the denoiser."""

    def __init__(self, scheduler, conditioner, root: str, denoiser_folder: str, video: bool = False):
        self.video = video  # samples are clips [C, F, H, W]
        self.scheduler = scheduler
        self.conditioner = conditioner
        self.root = root
        self.denoiser_folder = denoiser_folder
        self.vae = None  # AutoencoderKL of a latent pipeline (dpokit.diffusion_parts)
        self.control = None  # ControlNetResiduals of a pipeline with a controlnet/

    def save_pretrained(self, path: str) -> None:  # what a checkpoint stores next to the weights
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))


class DiffusionFamily:
    """``model.kind: diffusion`` (registered in :mod:`dpokit.families`)."""

    scorer = "diffusion"

    def check(self, config) -> None:
        from .diffusion_models import condition_kind, denoiser_dir, scheduler_dir

        root = os.path.expanduser(config.model.name_or_path or "")
        if not root or not os.path.isdir(root):
            raise ConfigError(f"model.name_or_path: no such directory: {config.model.name_or_path!r} (model.kind "
                              "diffusion loads a local pipeline directory with the denoiser and scheduler/)")
        denoiser_dir(root, config.diffusion.denoiser)
        scheduler_dir(root)
        d, r = config.diffusion, config.reference
        if config.data.kind not in ("pairs", "lists", "expert"):
            raise ConfigError(f"data.kind: {config.data.kind!r}: model.kind diffusion reads image pairs, lists "
                              "or expert images (data.kind: expert, the Diffusion-DRO loop)")
        if r.kind == "path" or r.path:
            raise ConfigError("reference: model.kind diffusion takes reference.kind copy or lora_disabled (a "
                              "reference path is not supported for denoisers)")
        if r.precompute and d.x_t != "forward":
            raise ConfigError(f"reference.precompute: diffusion.x_t {d.x_t!r} inverts x0 with the trained denoiser, "
                              "so the reference errors cannot be computed beforehand; use diffusion.x_t: forward")
        if condition_kind(root, d.condition, d.classes) == "text_encoder" and not all(
                os.path.isdir(os.path.join(root, f)) for f in ("text_encoder", "tokenizer")):
            raise ConfigError(f"diffusion.condition: text_encoder needs {root}/text_encoder and {root}/tokenizer")
        if d.condition == "class_labels" and not d.classes:
            raise ConfigError("diffusion.classes: condition class_labels needs the list of class captions")
        if d.num_frames is not None and (isinstance(d.num_frames, bool) or not isinstance(d.num_frames, int)
                                         or d.num_frames < 1):
            raise ConfigError(f"diffusion.num_frames: expected a positive integer, got {d.num_frames!r}")
        if d.timestep_range is not None and len(d.timestep_range) != 2:
            raise ConfigError(f"diffusion.timestep_range: expected [lo, hi), got {d.timestep_range}")
        from .diffusion_parts import check_config

        check_config(d)  # vae / ControlNet keys

    def load_policy(self, config):
        from .diffusion_models import (VIDEO_DENOISERS, apply_lora, build_conditioner, denoiser_dir, load_denoiser,
                                       load_scheduler)
        from .diffusion_parts import load_parts
        from .models import DTYPES

        root = os.path.expanduser(config.model.name_or_path)
        path, name = denoiser_dir(root, config.diffusion.denoiser)
        model = load_denoiser(root, config.diffusion.denoiser, DTYPES.get(config.model.dtype))
        if config.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        conditioner = build_conditioner(root, config.diffusion.condition, config.diffusion.classes, model)
        vae, control = load_parts(root, config.diffusion, model, DTYPES.get(config.model.dtype))
        if config.lora.enabled:
            model = apply_lora(model, config.lora)
        assets = DiffusionAssets(load_scheduler(root), conditioner, root, os.path.relpath(path, root),
                                 video=name in VIDEO_DENOISERS)
        assets.vae, assets.control = vae, control
        return model, assets

    def load_data(self, trainer):
        import torch

        from .data.conditions import check_bide_uniform, parse_conditioned_record
        from .data.images import load_image_examples
        from .data.video import load_video_examples
        from .diffusion_parts import prepare_examples

        config = trainer.config
        d, size = config.data, config.diffusion.image_size
        if getattr(trainer.tokenizer, "video", False):
            load = lambda source, limit=None: load_video_examples(  # noqa: E731
                source, d.kind, size, limit, config.diffusion.num_frames)
        else:
            parse = parse_conditioned_record  # + condition images and BideDPO records
            load = lambda source, limit=None: load_image_examples(  # noqa: E731
                source, d.kind, size, limit, parse=parse, check=check_bide_uniform)
        train, report = load(d.train, d.limit)
        evaluation = load(d.eval)[0] if d.eval else []
        check_bide_uniform(train + evaluation)  # train and eval alike
        if not evaluation and d.eval_fraction > 0:
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.train.seed)).tolist()
            n_eval = max(1, int(len(train) * d.eval_fraction))
            evaluation = [train[i] for i in sorted(perm[:n_eval])]
            train = [train[i] for i in sorted(perm[n_eval:])]
        built = ""
        if d.kind == "lists" and trainer.loss_fn.needs.data == "pairs":  # a pairwise loss: pairs from the groups
            from .data.image_lists import pairs_from_image_lists

            train, empty = pairs_from_image_lists(train, d.pair_builder, d.min_margin)
            evaluation, empty_eval = pairs_from_image_lists(evaluation, d.pair_builder, d.min_margin)
            built = f", pairs built {d.pair_builder} ({empty + empty_eval} groups without a strict order gave none)"
            if not train:
                raise ConfigError(f"data.train: no pair could be built from the ranked groups ({d.pair_builder})")
        for position, ex in enumerate(train):
            ex.index = position
        for position, ex in enumerate(evaluation):  # distinct noise seeds from the training examples
            ex.index = len(train) + position
        trainer.tokenizer.conditioner.to(trainer.accelerator.device)
        latents = prepare_examples(trainer, train + evaluation)  # condition checks; VAE latents (cached)
        summary = f"{report['records']} records, {report['ties_dropped']} ties dropped, {len(train)} train, " \
                  f"{len(evaluation)} eval{built}"
        if latents:
            summary += f"; latents: {latents['encoded']} encoded, {latents['cached']} from the cache"
        return train, evaluation, DataPlan(), {"load": summary, "tokenize": "images (no tokenization)"}

    def collate(self, trainer, examples, training: bool = True):
        from .data.conditions import condition_batch
        from .data.images import collate_images
        from .data.video import collate_videos

        draw = trainer.state["epoch"] if training and hasattr(trainer, "state") else 0
        collate = collate_videos if getattr(trainer.tokenizer, "video", False) else collate_images
        batch = collate(examples, [draw] * len(examples), trainer.tokenizer.conditioner)
        batch.conditions.update(condition_batch(examples))  # ControlNet condition images, if any
        return batch.to(trainer.accelerator.device)

    def save_final(self, trainer) -> str:
        assets: DiffusionAssets = trainer.tokenizer
        final = safe_join(trainer.output_dir, "final")
        trainer.accelerator.wait_for_everyone()
        if trainer.is_main:
            write_final(assets, trainer.accelerator.unwrap_model(trainer.model), final)
            self.write_samples(trainer)
        trainer.accelerator.wait_for_everyone()
        return final

    def write_samples(self, trainer) -> None:
        """Policy vs reference samples from fixed noise, for the report (``diffusion.sample_grids``)."""
        from .diffusion_sampling import write_run_samples
        from .eval.sample_grids import FOLDER

        try:
            write_run_samples(trainer, safe_join(trainer.output_dir, FOLDER))
        except Exception as err:  # the trained model is saved; a failed drawing must not lose the run
            logger.warning("sample grids not written: %s: %s", type(err).__name__, err)


def write_final(assets: DiffusionAssets, model: Any, final: str) -> str:
    """``final/``: the trained denoiser in the input's layout (LoRA merged, the adapter under
    ``final/adapter``) next to copies of the pipeline's other folders (scheduler, text encoder, ...)."""
    os.makedirs(final, exist_ok=True)
    for name in os.listdir(assets.root):  # scheduler, text encoder, tokenizer, model_index.json
        source = os.path.join(assets.root, name)
        if assets.denoiser_folder != "." and name == assets.denoiser_folder:
            continue
        if assets.denoiser_folder == "." and name not in ("scheduler", "text_encoder", "tokenizer"):
            continue
        target = os.path.join(final, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif os.path.isfile(source):
            shutil.copy2(source, target)
    out = final if assets.denoiser_folder == "." else os.path.join(final, assets.denoiser_folder)
    if hasattr(model, "merge_and_unload"):  # PEFT: the adapter, then the merged denoiser
        import copy

        model.save_pretrained(os.path.join(final, "adapter"), safe_serialization=True)
        save_diffusers_lora(model, os.path.join(final, "adapter"), assets.denoiser_folder)
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    return final


def save_diffusers_lora(model, folder: str, denoiser_folder: str) -> str:
    """The adapter in the layout a diffusers pipeline's ``load_lora_weights(folder)`` reads:
    ``pytorch_lora_weights.safetensors`` with the PEFT keys under the denoiser's prefix (``unet.`` or
    ``transformer.``). PEFT's own ``adapter_model.safetensors`` has no such prefix, and
    ``load_lora_weights`` would load nothing from it (with only a warning)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    prefix = denoiser_folder if denoiser_folder in ("unet", "transformer") else (
        "transformer" if "Transformer" in type(model.get_base_model()).__name__ else "unet")
    state = {}
    for key, value in get_peft_model_state_dict(model).items():
        key = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        state[f"{prefix}.{key}"] = value.detach().contiguous().cpu()
    config = model.peft_config[model.active_adapter].to_dict()  # rank and alpha, so the scaling round-trips
    adapter = {f"{prefix}.{k}": (sorted(v) if isinstance(v, (set, list, tuple)) else v) for k, v in config.items()
               if k in ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora",
                        "rank_pattern", "alpha_pattern")}
    path = os.path.join(folder, "pytorch_lora_weights.safetensors")
    save_file(state, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(adapter, sort_keys=True)})
    return path
