"""Model families: what a run of ``model.kind`` loads, reads, batches and saves.

The trainer knows no modality by name. It asks the family of ``config.model.kind`` for

    check(config)                       model paths and settings, before anything loads (preflight)
    load_policy(config) -> (model, assets)   assets: the tokenizer (causal_lm) or what scores the
                                        denoiser (diffusion: scheduler + condition encoder)
    scorer                              the scorer kind of :func:`dpokit.scoring.build_scorer`
    load_data(trainer) -> (train, eval, plan, report)
    collate(trainer, examples, training) -> batch
    tokenize(examples, tokenizer, ...)  (text families: :func:`dpokit.data.tokenize_examples`'s signature;
                                        ``Trainer.tokenize`` and the online rounds call it)
    save_final(trainer) -> path         (optional; without it the trainer saves a causal LM)

and a new modality adds a family and a scorer, never a branch in the loop.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict

from .data.files import looks_like_hub_id
from .diffusion_family import DiffusionFamily
from .errors import ConfigError
from .models import register_kind

FAMILIES: Dict[str, Any] = {}


def register_family(name: str) -> Callable:
    """Register a family class under a ``model.kind`` name (an instance serves every run)."""

    def decorator(cls):
        FAMILIES[name] = cls()
        if hasattr(cls, "auto_class"):  # a transformers family: dpokit.models loads it this way
            register_kind(name, FAMILIES[name])
        return cls

    return decorator


def model_family(kind: str):
    family = FAMILIES.get(kind)
    if family is None:
        raise ConfigError(f"model.kind: {kind!r} is not one of {', '.join(sorted(FAMILIES))}")
    return family


@register_family("causal_lm")
class CausalLMFamily:
    """Hugging Face causal language models: tokenizer, tokenized text records, padded batches."""

    scorer = "causal_lm"
    auto_class = "AutoModelForCausalLM"  # how dpokit.models loads the policy, reference and checkpoints

    @staticmethod
    def load_assets(*args):
        from .models import load_tokenizer

        return load_tokenizer(*args)

    def prepare_model(self, model, config) -> None:
        """After loading, before LoRA."""

    def lora_targets(self, model, targets):
        return targets

    # `dpokit eval`: the log-prob engine class its pairs are scored with, and whether the text-only
    # diagnostics (drift / top-k / separability / layer trace over token ids) and generation apply
    text_diagnostics = True

    @staticmethod
    def eval_engine():
        from .scoring.lm.engine import LogProbEngine

        return LogProbEngine

    def check(self, config) -> None:
        """A model named by a local path that does not exist fails here, not inside transformers."""
        for key, value in (("model.name_or_path", config.model.name_or_path),
                           ("reference.path", config.reference.path)):
            path = os.path.expanduser(value or "")
            if value and not os.path.exists(path) and not looks_like_hub_id(value):
                raise ConfigError(f"{key}: no such directory: {value} (a local model directory, or a hub id such "
                                  "as Qwen/Qwen2.5-0.5B-Instruct)")
            if value and os.path.isfile(path):
                raise ConfigError(f"{key}: {value} is a file; give the model's directory (with config.json)")
            if value and os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
                raise ConfigError(f"{key}: {value} has no config.json, so it is not a saved model directory "
                                  "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))")

    def load_policy(self, config):
        from .models import load_policy

        return load_policy(config)  # through auto_class, load_assets, prepare_model and lora_targets

    # how records are read, tokenized and batched (the vision-language family swaps all three)
    @staticmethod
    def read(*args, **kwargs):
        from .data.formats import load_examples

        return load_examples(*args, **kwargs)

    @staticmethod
    def tokenize(*args, **kwargs):
        from .data.tokenize import tokenize_examples

        return tokenize_examples(*args, **kwargs)

    @staticmethod
    def batch(examples, data_kind: str):
        from .data import collate

        return collate(examples, data_kind)

    def load_data(self, trainer):
        from .data.build import load_run_data

        return load_run_data(trainer.config.data, trainer.config.train.seed, trainer.loss_fn.needs.data,
                             trainer.tokenize, self.read,
                             getattr(trainer.scorer, "prepare_examples", None))  # the step scorer: step pairs -> ids

    def collate(self, trainer, examples, training: bool = True):
        return self.batch(examples, trainer.loss_fn.needs.data)


@register_family("vlm")
class VisionLanguageFamily(CausalLMFamily):
    """Image-text-to-text models (Llava family): the processor as tokenizer, records with images
    (:mod:`dpokit.data.vision`), the ``vlm`` scorer (docs/vlm.md)."""

    scorer = "vlm"
    auto_class = "AutoModelForImageTextToText"
    text_diagnostics = False  # they read token ids only; the images would be missing

    def check(self, config) -> None:
        super().check(config)
        if config.train.projection != "chunked":  # the vlm scorer has no fused projection
            raise ConfigError(f"train.projection: {config.train.projection!r} is not served for model.kind: vlm "
                              "(its scorer uses the chunked projection); leave it at 'chunked'")

    @staticmethod
    def eval_engine():
        from .scoring.vlm import VisionLogProbEngine

        return VisionLogProbEngine

    @staticmethod
    def load_assets(*args):
        from .models import load_processor

        return load_processor(*args)

    def prepare_model(self, model, config) -> None:
        """The vision tower frozen unless ``model.freeze_vision`` is false."""
        if config.model.freeze_vision:
            from .models import freeze_vision

            freeze_vision(model)

    def lora_targets(self, model, targets):
        """``all-linear``: the language model's linear layers only (vision tower and projector keep none)."""
        if targets != "all-linear":
            return targets
        from .models import language_model_linear

        return language_model_linear(model)

    @staticmethod
    def read(*args, **kwargs):
        from .data.vision import load_vision_examples

        return load_vision_examples(*args, **kwargs)

    @staticmethod
    def tokenize(*args, **kwargs):
        from .data.vision import tokenize_vision_examples

        return tokenize_vision_examples(*args, **kwargs)

    @staticmethod
    def batch(examples, data_kind: str):
        from .data.vision import collate_vision

        return collate_vision(examples, data_kind)


register_family("diffusion")(DiffusionFamily)
