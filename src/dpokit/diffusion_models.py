"""Loading diffusion denoisers, their schedulers and condition encoders from a local directory.

A model directory is laid out as a diffusers pipeline (``DiffusionPipeline.save_pretrained``):

    model_index.json            (optional)
    unet/ or transformer/       the denoiser: config.json + diffusion_pytorch_model.safetensors
    scheduler/                  scheduler_config.json
    text_encoder/, tokenizer/   (optional) a transformers text encoder and its tokenizer

or holds the denoiser itself at its top (``config.json``) with a ``scheduler/`` folder. Only the
classes named below are loaded (``_class_name`` of each config), weights only from safetensors,
and transformers models without remote code.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from .errors import ConfigError

DENOISERS = ("UNet2DConditionModel", "UNet2DModel", "SD3Transformer2DModel", "DiTTransformer2DModel",
             "Transformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel")
VIDEO_DENOISERS = ("WanTransformer3DModel",)  # samples [C, F, H, W]: clips (dpokit.data.video)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
DENOISER_FOLDERS = ("unet", "transformer", ".")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # as the diffusers Diffusion-DPO script


def _read_json(path: str, key: str) -> Dict[str, Any]:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot read {path}: {err}") from None


def denoiser_dir(root: str, subfolder: Optional[str] = None) -> Tuple[str, str]:
    """``(directory, class name)`` of the denoiser under ``root``."""
    folders = [subfolder] if subfolder else list(DENOISER_FOLDERS)
    for folder in folders:
        path = os.path.normpath(os.path.join(root, folder))
        config = os.path.join(path, "config.json")
        if os.path.isfile(config):
            name = _read_json(config, "model.name_or_path").get("_class_name")
            if name not in DENOISERS:
                raise ConfigError(f"model.name_or_path: {config} names {name!r}, not one of the denoisers dpokit "
                                  f"loads ({', '.join(DENOISERS)})")
            return path, name
    where = f"{subfolder}/config.json" if subfolder else "unet/config.json, transformer/config.json or config.json"
    raise ConfigError(f"model.name_or_path: {root} has no {where} (save the denoiser with "
                      "model.save_pretrained(dir), or a pipeline with pipeline.save_pretrained(dir))")


def scheduler_dir(root: str) -> str:
    for path in (os.path.join(root, "scheduler"), root):
        if os.path.isfile(os.path.join(path, "scheduler_config.json")):
            return path
    raise ConfigError(f"model.name_or_path: {root} has no scheduler/scheduler_config.json (save the noise "
                      "scheduler with scheduler.save_pretrained(dir + '/scheduler'))")


def load_denoiser(root: str, subfolder: Optional[str] = None, dtype: Optional[torch.dtype] = None):
    import diffusers

    path, name = denoiser_dir(root, subfolder)
    kwargs = {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        return getattr(diffusers, name).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: cannot load the {name} in {path}: {err}") from None


def load_frozen_part(root: str, folder: str, class_name: str, dtype: Optional[torch.dtype] = None,
                     hint: str = ""):
    """The pipeline's ``folder/`` (a diffusers model of class ``class_name``, safetensors), frozen and
    in eval mode; None when the pipeline has no such folder. ``hint`` ends the message when the
    folder holds another class."""
    path = os.path.join(root, folder)
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    import diffusers

    try:
        with open(config) as handle:
            name = json.load(handle).get("_class_name")
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: cannot read {config}: {err}") from None
    if name != class_name:
        raise ConfigError(f"model.name_or_path: {config} names {name!r}; dpokit loads {class_name} there{hint}")
    kwargs = {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        model = getattr(diffusers, class_name).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: cannot load the {class_name} in {path}: {err}") from None
    return model.eval().requires_grad_(False)


def load_scheduler(root: str):
    import diffusers

    path = scheduler_dir(root)
    name = _read_json(os.path.join(path, "scheduler_config.json"), "model.name_or_path").get("_class_name")
    if name not in SCHEDULERS:
        raise ConfigError(f"model.name_or_path: {path}/scheduler_config.json names {name!r}, not one of "
                          f"{', '.join(SCHEDULERS)}")
    return getattr(diffusers, name).from_pretrained(path)


class TextConditioner:
    """Captions -> the denoiser's text conditions, with a frozen transformers text encoder:
    ``encoder_hidden_states`` (last hidden state) and, for denoisers that take one,
    ``pooled_projections`` (the encoder's pooled output)."""

    def __init__(self, root: str, denoiser, max_length: Optional[int] = None):
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer"), trust_remote_code=False)
            self.encoder = AutoModel.from_pretrained(os.path.join(root, "text_encoder"), use_safetensors=True,
                                                     trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.name_or_path: cannot load {root}/text_encoder and tokenizer: {err}") from None
        self.encoder.eval().requires_grad_(False)
        self.max_length = max_length or getattr(self.tokenizer, "model_max_length", 77)
        if self.max_length > 4096:
            self.max_length = 77
        self.pooled = "pooled_projections" in inspect.signature(denoiser.forward).parameters

    def to(self, device):
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def __call__(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        out = self.encoder(input_ids=tokens["input_ids"].to(device))
        conditions = {"encoder_hidden_states": out.last_hidden_state}
        if self.pooled:
            pooled = getattr(out, "pooler_output", None)
            conditions["pooled_projections"] = pooled if pooled is not None else out.last_hidden_state.mean(1)
        return conditions


class ClassConditioner:
    """Captions -> ``class_labels``: the caption's position in ``classes``."""

    def __init__(self, classes: List[str]):
        self.index = {c: i for i, c in enumerate(classes)}

    def to(self, device):
        return self

    def __call__(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        missing = [c for c in captions if c not in self.index]
        if missing:
            raise ValueError(f"caption {missing[0]!r} is not one of diffusion.classes")
        return {"class_labels": torch.tensor([self.index[c] for c in captions], dtype=torch.long)}


class NoConditioner:
    def to(self, device):
        return self

    def __call__(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        return {}


def condition_kind(root: str, setting: str, classes) -> str:
    if setting != "auto":
        return setting
    if os.path.isdir(os.path.join(root, "text_encoder")):
        return "text_encoder"
    return "class_labels" if classes else "none"


def build_conditioner(root: str, setting: str, classes, denoiser):
    kind = condition_kind(root, setting, classes)
    if kind == "text_encoder":
        return TextConditioner(root, denoiser)
    if kind == "class_labels":
        if not classes:
            raise ConfigError("diffusion.classes: condition class_labels needs the list of class captions")
        return ClassConditioner(list(classes))
    return NoConditioner()


def apply_lora(denoiser, lora) -> Any:
    """The denoiser wrapped as a PEFT model with LoRA on its attention projections (``lora.target_modules``
    'all-linear' means the diffusers script's ``to_q/to_k/to_v/to_out.0``)."""
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS if lora.target_modules in ("all-linear", None) else lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        init_lora_weights="gaussian")
    return get_peft_model(denoiser, config)
