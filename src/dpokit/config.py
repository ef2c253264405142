"""One typed configuration for a run: YAML in, every key validated, clear errors out.

    model:      what to train (local path or hub id) and how to load it
    lora:       optional LoRA adapters (PEFT)
    data:       where the preference data is and how it is tokenized
    loss:       the objective: ``name`` (a registered loss or a sum like "dpo + 0.2*sft")
                plus its hyperparameters; or ``components: [{name, weight, ...}]``
    reference:  where reference log-probs come from
    train:      optimisation, logging, evaluation and checkpoints

Unknown keys, wrong types and impossible combinations fail here, before any model is loaded.
``--set train.lr=1e-5`` style overrides are applied to the raw dict before validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported as dpokit.config.ConfigError)




@dataclass
class ModelConfig:
    name_or_path: str = ""
    kind: str = "causal_lm"  # causal_lm | vlm (docs/vlm.md) | diffusion (docs/diffusion.md): dpokit.families
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None  # sdpa, eager, flex_attention, flash_attention_2, auto (dpokit.kernels)
    gradient_checkpointing: bool = False
    compile: bool = False
    revision: Optional[str] = None
    freeze_vision: bool = True  # vlm: the vision tower does not train (LoRA goes to the language model only)


@dataclass
class DiffusionConfig:
    """``model.kind: diffusion``: a diffusers denoiser, its scheduler and how captions become conditions."""

    denoiser: Optional[str] = None  # subfolder of model.name_or_path holding the denoiser (auto: unet, transformer, .)
    condition: str = "auto"  # auto | text_encoder | class_labels | none
    classes: Optional[List[str]] = None  # condition class_labels: caption -> index in this list
    image_size: Optional[int] = None  # images are resized to image_size x image_size
    timestep_range: Optional[List[int]] = None  # [lo, hi) of the uniform timestep draw (default [0, T))
    x_t: str = "forward"  # forward | ddim_inversion (InPO) | renoise (SmPO): how x_t is obtained
    inversion_steps: int = 10  # inverse DDIM grid (official: 10; SmPO SD1.5: 5)
    inversion_eta: float = 0.0  # ddim_inversion: eta noise per step (InPO code: 0.1)
    inversion_model: str = "policy"  # policy (as the official code) | reference
    num_frames: Optional[int] = None  # video denoisers: every clip must have this many frames (default: any)
    sample_grids: int = 4  # after training: policy vs reference samples of this many captions (0: none)
    sample_steps: int = 20  # sampler steps of those samples (DDIM, or Euler for flow matching)
    vae: str = "auto"  # auto: encode images with the pipeline's vae/ when it has one | none: pixel space
    latent_sample: str = "sample"  # sample: one seeded draw of the VAE posterior per image | mean
    vae_batch_size: int = 16  # images per VAE encoder call when the latent cache is filled
    controlnet_scale: float = 1.0  # conditioning_scale of a pipeline's controlnet/ (frozen)
    dro: Optional[Dict[str, Any]] = None  # data.kind expert: Diffusion-DRO loop options (dpokit.online.dro_run)


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class DataConfig:
    train: Any = ""  # file path, hub id (or a datasets.Dataset in the Python API)
    eval: Any = None
    eval_fraction: float = 0.0  # held out from train when no eval set is given
    kind: str = "pairs"  # pairs | unpaired | lists | expert (positives only: the Diffusion-DRO loop)
    split: str = "train"
    limit: Optional[int] = None
    max_length: int = 512
    max_prompt_length: Optional[int] = None
    truncation_mode: str = "keep_end"
    append_eos: bool = True
    on_bad_content: str = "skip"  # skip | error (empty completions, chosen == rejected)
    on_empty_completion: str = "skip"  # skip | error (prompt leaves no room within max_length)
    on_extra_columns: str = "ignore"  # ignore | error (non-numeric columns no format reads)
    # ranked lists (data/build.py): pairs for a pairwise loss, curriculum, label noise, Sem-DPO weights
    pair_builder: str = "best_vs_worst"  # best_vs_worst | best_vs_each | all_pairs | margin
    min_margin: float = 0.0  # score gap a built pair needs (> 0 required by 'margin')
    objective_weights: Optional[Dict[str, float]] = None  # rank lists by a weighted sum of objectives
    curriculum: Optional[Dict[str, Any]] = None  # Curry-DPO: {stages: 3, epochs_per_stage: 1}
    label_noise: float = 0.0  # fraction of training pairs flipped (lists: scores swapped)
    label_noise_seed: int = 0
    sem_alpha: Optional[float] = None  # Sem-DPO weights exp(-alpha * d_cos(e(x), e(y_w))) in extras


@dataclass
class ReferenceConfig:
    kind: str = "auto"  # auto | copy | path | lora_disabled | none
    path: Optional[str] = None
    precompute: bool = False  # compute reference log-probs once, cache on disk, free the model
    cache_dir: Optional[str] = None  # default: ~/.cache/dpokit/reference
    sync_every: int = 0  # TR-DPO: every N optimizer steps ref <- alpha*policy + (1-alpha)*ref
    sync_alpha: float = 0.6
    # kind: fused (InfiFPO): source models fused at the sequence level; see dpokit.reference_fusion
    sources: List[str] = field(default_factory=list)
    fusion: str = "mean"  # mean | max_margin
    fusion_weights: Optional[List[float]] = None  # gamma_i for fusion: mean (default 1/N)
    clip: bool = True  # clip each source against the initial pivot (max on chosen, min on rejected)
    length_norm: bool = True  # per-token mean log-probs in each model's own tokenization


@dataclass
class TrainConfig:
    output_dir: str = "runs/dpokit"
    seed: int = 42
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-7
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    warmup_steps: Optional[int] = None
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    layout: str = "padded"
    chunk_size: int = 1024
    projection: str = "chunked"  # chunked | liger (optional fused kernel on CUDA: dpokit.scoring.lm.fused)
    group_by_length: bool = False
    log_every: int = 1
    eval_every: int = 0
    eval_batch_size: Optional[int] = None
    save_every: int = 0
    keep_last: int = 2
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops with a checkpoint
    report_to: List[str] = field(default_factory=lambda: ["tensorboard"])
    progress_bar: bool = True
    monitor: Any = False  # true or {every, examples, judge, ...}: over-optimisation indicators (dpokit.train.monitor)
    scorer: Optional[str] = None  # a registered scorer kind (dpokit.scoring); None: the model family's; steps: step-level losses
    step_separator: str = "\n"  # scorer steps: the text that ends a reasoning step


@dataclass
class OnlineConfig:
    """Online / iterative rounds (``dpokit.online.loop``); an empty ``strategy`` means offline training."""

    strategy: str = ""  # a round strategy: online_dpo | iterative_dpo | dno | sppo | apo | xpo | hypo | ofs_dpo | dpa_rsf | ...
    rounds: int = 3
    prompts: Any = None  # prompts (a file or dataset with a `prompt` column); default: the prompts of data.train
    prompts_per_round: Optional[int] = None  # default: every prompt, every round
    samples_per_prompt: int = 2
    sampler: str = "hf"  # hf (transformers.generate) | vllm
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Optional[int] = None
    generation_batch_size: int = 32
    judge: Any = None  # {kind: callable, function: module:fn} | {kind: reward_model, path: ...} | ...
    pairs: str = "best_vs_worst"  # how judged samples become pairs: best_vs_worst | best_vs_each | all_pairs
    min_margin: float = 0.0  # keep a pair only when score(chosen) - score(rejected) >= min_margin (and > 0)
    refresh_every: int = 0  # > 0: fresh samples and pairs every N optimizer steps (frozen-reference strategies)
    eval_prompts: Any = None  # judged each round (mean judge score of policy samples)
    eval_samples_per_prompt: int = 1
    options: Dict[str, Any] = field(default_factory=dict)  # strategy hyperparameters (apo: alpha, xpo: alpha, ...)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: Dict[str, Any] = field(default_factory=lambda: {"name": "dpo", "beta": 0.1})
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml_dict(self) -> Dict[str, Any]:
        """``to_dict`` with every value YAML can write (anything else as its string)."""
        return _plain(self.to_dict())

    def flat(self) -> Dict[str, Any]:
        """``{"section.key": value}`` for the scalar values (what experiment trackers record)."""
        flat = {}
        for section, values in self.to_dict().items():
            for key, value in (values.items() if isinstance(values, dict) else []):
                if isinstance(value, (int, float, str, bool)):
                    flat[f"{section}.{key}"] = value
        return flat


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


CHOICES = {
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.kind": ("causal_lm", "vlm", "diffusion"),
    "diffusion.condition": ("auto", "text_encoder", "class_labels", "none"),
    "diffusion.x_t": ("forward", "ddim_inversion", "renoise"),
    "diffusion.inversion_model": ("policy", "reference"),
    "diffusion.vae": ("auto", "none"),
    "diffusion.latent_sample": ("sample", "mean"),
    "data.kind": ("pairs", "unpaired", "lists", "expert"),
    "data.pair_builder": ("best_vs_worst", "best_vs_each", "all_pairs", "margin"),
    "data.truncation_mode": ("keep_end", "keep_start"),
    "data.on_bad_content": ("skip", "error"),
    "data.on_empty_completion": ("skip", "error"),
    "data.on_extra_columns": ("ignore", "error"),
    "reference.kind": ("auto", "copy", "path", "lora_disabled", "none", "fused"),
    "reference.fusion": ("mean", "max_margin"),
    "train.scheduler": ("cosine", "linear", "constant"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "train.projection": ("chunked", "liger"),
}


def _check_type(path: str, value: Any, annotation) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(path, value, inner[0])
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_type(f"{path}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-6" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, raw: Any, path: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{path + '.' if path else ''}{key}'{hint}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        sub = f"{path}.{name}" if path else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw[name], sub)
        else:
            value = _check_type(sub, raw[name], annotation)
            if sub in CHOICES and value not in CHOICES[sub]:
                raise ConfigError(f"{sub}: {value!r} is not one of {', '.join(CHOICES[sub])}")
            values[name] = value
    return cls(**values)


def _positive(path: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(config: Config) -> Config:
    """Checks within the config: required keys, ranges, and combinations that need no registry.

    Checks that need the loss, layout or strategy registries (a loss's data kind and reference,
    hyperparameter ranges, layouts, online strategies) run in :func:`dpokit.preflight.check_run`,
    which the CLI, the trainer and the online loop call before any model loads.
    """
    t, d, r = config.train, config.data, config.reference
    if not config.model.name_or_path:
        raise ConfigError("model.name_or_path: required (a local model directory or a hub id)")
    if not d.train and not (config.online.strategy and config.online.prompts):
        raise ConfigError("data.train: required (a .jsonl/.json/.parquet/.csv file or a hub dataset id)")
    for path, value in (("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                        ("train.epochs", t.epochs), ("data.max_length", d.max_length),
                        ("train.chunk_size", t.chunk_size), ("train.lr", t.lr), ("train.max_steps", t.max_steps),
                        ("data.max_prompt_length", d.max_prompt_length), ("train.keep_last", t.keep_last),
                        ("train.max_bad_steps", t.max_bad_steps)):
        _positive(path, value)
    for path, value in (("train.log_every", t.log_every), ("train.eval_every", t.eval_every),
                        ("train.save_every", t.save_every), ("train.weight_decay", t.weight_decay),
                        ("reference.sync_every", r.sync_every)):
        _positive(path, value, allow_zero=True)
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction: must be in [0, 1), got {d.eval_fraction}")
    if not 0.0 <= t.warmup_ratio <= 1.0:
        raise ConfigError(f"train.warmup_ratio: must be in [0, 1], got {t.warmup_ratio}")
    if not 0.0 < r.sync_alpha <= 1.0:
        raise ConfigError(f"reference.sync_alpha: must be in (0, 1], got {r.sync_alpha}")
    if len(t.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in t.adam_betas):
        raise ConfigError(f"train.adam_betas: must be two numbers in [0, 1), got {t.adam_betas}")
    if not t.step_separator:
        raise ConfigError("train.step_separator: must not be empty (the text that ends a step, e.g. \"\\n\" or \";\")")
    if r.kind == "path" and not r.path:
        raise ConfigError("reference.path: required when reference.kind is 'path'")
    if r.path and r.kind not in ("path", "auto", "fused"):
        raise ConfigError(f"reference.path is set but reference.kind is {r.kind!r}; use kind: path")
    if r.kind == "lora_disabled" and not config.lora.enabled:
        raise ConfigError("reference.kind 'lora_disabled' needs lora.enabled: true")
    if r.precompute and r.sync_every:
        raise ConfigError("reference.precompute and reference.sync_every exclude each other: a synced "
                          "reference changes, so its log-probs cannot be cached")
    if d.min_margin < 0:
        raise ConfigError(f"data.min_margin: must be >= 0, got {d.min_margin}")
    if d.pair_builder == "margin" and d.min_margin <= 0:
        raise ConfigError("data.min_margin: the 'margin' pair builder needs min_margin > 0")
    if not 0.0 <= d.label_noise <= 0.5:
        raise ConfigError(f"data.label_noise: must be in [0, 0.5], got {d.label_noise}")
    if d.sem_alpha is not None and d.sem_alpha < 0:
        raise ConfigError(f"data.sem_alpha: must be >= 0, got {d.sem_alpha}")
    if d.objective_weights is not None:
        if d.kind != "lists":
            raise ConfigError("data.objective_weights: needs data.kind: lists")
        for name, weight in d.objective_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ConfigError(f"data.objective_weights.{name}: expected a number, got {weight!r}")
    return config


def set_by_path(raw: Dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text.strip() else ""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def from_dict(raw: Dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    raw = dict(raw or {})
    for assignment in overrides:
        set_by_path(raw, assignment)
    config = _build(Config, raw, "")
    if "loss" in raw and not isinstance(raw["loss"], dict):
        raise ConfigError("loss: expected a mapping such as {name: dpo, beta: 0.1}")
    return validate(config)


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file (a YAML file such as examples/hh_rlhf_dpo.yaml)")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
