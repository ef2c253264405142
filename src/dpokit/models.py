"""Loading policies, references and tokenizers through ``transformers`` and ``peft``.

Security defaults: ``trust_remote_code`` is False unless the config says otherwise, and weights are
loaded only from safetensors files (``use_safetensors=True``): a checkpoint that ships only pickled
``.bin`` weights is refused with an explanation rather than unpickled.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from .config import Config, ModelConfig
from .errors import ConfigError
from .kernels import resolve_attention

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# How each model.kind loads, as its family (dpokit.families) declares it: ``auto_class`` (the
# transformers Auto class name), ``load_assets(path, trust_remote_code, revision)`` (tokenizer or
# processor), ``prepare_model(model, config)`` (after loading) and ``lora_targets(model, targets)``.
# Kinds not registered load as causal LMs.
KINDS: Dict[str, object] = {}


def register_kind(kind: str, family) -> None:
    KINDS[kind] = family


def _kind(cfg):
    """The registered family of ``cfg.kind`` (None: a plain causal LM). A kind whose family has not
    been registered (``dpokit.families`` not imported) is an error, never a silent causal-LM load."""
    kind = getattr(cfg, "kind", "causal_lm") or "causal_lm"
    family = KINDS.get(kind)
    if family is None and kind != "causal_lm":
        raise ConfigError(f"model.kind: {kind!r} has no loader registered (import dpokit.families, which "
                          "registers every model kind, before loading)")
    return family


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: Optional[str] = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_processor(name_or_path: str, trust_remote_code: bool = False, revision: Optional[str] = None):
    """A vision-language model's processor (tokenizer + image processor); the tokenizer gets a pad token."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (ImportError, ValueError, AttributeError, TypeError) as err:  # e.g. a video half that needs torchvision
        processor, failure = None, err
    else:
        failure = None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        processor = _grid_processor(name_or_path, trust_remote_code, revision) or processor
    if processor is None:
        raise ValueError(f"{name_or_path}: AutoProcessor failed: {failure}")
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{name_or_path}: no processor with an image processor and a tokenizer was found "
                         "(a vision-language model directory holds processor_config.json or "
                         "preprocessor_config.json; save it with processor.save_pretrained)")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _grid_processor(name_or_path: str, trust_remote_code: bool = False, revision: Optional[str] = None):
    """A patch-grid (Qwen2-VL style) processor from the saved tokenizer + image processor, or None."""
    from .data.grid_processor import GridImageProcessor

    try:
        return GridImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, TypeError):
        return None


def load_causal_lm(name_or_path: str, cfg: ModelConfig, layout: str = "padded"):
    """The model at ``name_or_path``, through the Auto class of ``cfg.kind``'s family
    (``AutoModelForCausalLM``; a vision-language model: ``AutoModelForImageTextToText``).
    ``model.attn_implementation: auto`` picks the kernel for ``layout`` on this machine
    (:func:`dpokit.kernels.choose_attention`; SDPA for a vision-language model)."""
    import transformers

    auto = getattr(transformers, getattr(_kind(cfg), "auto_class", "AutoModelForCausalLM"))
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}
    if cfg.dtype != "auto":
        kwargs["dtype"] = DTYPES[cfg.dtype]
    # vision-language models: the vision tower takes the same kernel, which flex/flash may not serve
    attn = resolve_attention(cfg.attn_implementation, layout if auto is transformers.AutoModelForCausalLM else "padded",
                             dtype=cfg.dtype)
    if attn:
        kwargs["attn_implementation"] = attn
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    try:
        model = auto.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if "safetensors" in str(err).lower():
            raise OSError(f"{name_or_path}: no safetensors weights found. dpokit does not unpickle .bin "
                          "weights; convert them to safetensors first.") from err
        raise
    return model


def load_named(name_or_path: str, cfg: ModelConfig, key: str, tokenizer: bool = False, layout: str = "padded"):
    """``load_causal_lm`` (and the tokenizer first, with ``tokenizer=True``) for the config key ``key``:
    a model that cannot be loaded (no such directory, no config.json, no safetensors weights, an
    unreachable hub) ends in a :class:`~dpokit.errors.ConfigError` naming the key, not a traceback."""
    try:
        load = getattr(_kind(cfg), "load_assets", load_tokenizer)
        loaded_tokenizer = load(name_or_path, cfg.trust_remote_code, cfg.revision) if tokenizer else None
        model = load_causal_lm(name_or_path, cfg, layout)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot load {name_or_path!r}: {err}") from None
    return (loaded_tokenizer, model) if tokenizer else model


def apply_lora(model, cfg: Config):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    targets = lora.target_modules
    family = _kind(cfg.model)
    if family is not None:
        targets = family.lora_targets(model, targets)
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


VISION_PARTS = ("vision_tower", "visual", "vision_model", "multi_modal_projector")


def language_model_linear(model) -> str:
    """``target_modules`` for LoRA on a vision-language model's language model only: a regular
    expression over the names of its linear layers (the vision tower, projector and LM head keep none)."""
    import re

    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and "language_model" in name})
    if not leaves:
        raise ConfigError("lora.target_modules: this vision-language model has no linear layers under "
                          "'language_model'; name the target modules explicitly")
    return r".*language_model.*\.(" + "|".join(map(re.escape, leaves)) + r")"


def freeze_vision(model) -> int:
    """``requires_grad = False`` on the vision tower; returns how many parameters were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(part in name.split(".") for part in VISION_PARTS[:3]):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def load_policy(cfg: Config):
    """Policy model (with LoRA when enabled) and its tokenizer (a vision-language model: its
    processor, and the vision tower frozen unless ``model.freeze_vision`` is false)."""
    tokenizer, model = load_named(cfg.model.name_or_path, cfg.model, "model.name_or_path", tokenizer=True,
                                  layout=cfg.train.layout)
    model.config.use_cache = False
    family = _kind(cfg.model)
    if family is not None:
        family.prepare_model(model, cfg)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            model.enable_input_require_grads()
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model, tokenizer


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters that train (all, or the LoRA ones), contiguous and de-duplicated for safetensors."""
    state = {}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        state[name] = param.detach().cpu().contiguous()
    return state
