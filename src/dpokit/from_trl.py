"""Translate the YAML of ``trl dpo --config FILE`` into a dpokit config (``dpokit train --from-trl FILE``).

    translation = translate(yaml.safe_load(open("trl.yaml")), source="trl.yaml")
    translation.config     # a raw dpokit config dict (sections model, lora, data, loss, reference, train)
    translation.warnings   # keys that change nothing dpokit computes, or differences worth knowing

A TRL config is flat: the fields of TRL's ``ScriptArguments``, ``ModelConfig`` and ``DPOConfig``
(which extends ``transformers.TrainingArguments``). Every key is either mapped onto a dpokit key,
accepted with a warning (it changes nothing dpokit trains: hub uploads, dataloader workers, ...), or
refused with an error naming it; a misspelt key gets a suggestion. TRL's defaults are written out where
dpokit's differ (learning rate 1e-6, 3 epochs, no warmup, linear schedule, max_length 1024, bf16,
gradient checkpointing, float32 weights, logging every 10 steps, no trackers), so the same file
trains the same run. The side-by-side table: ``docs/migrating-from-trl.md``.

Pure: no model, tokenizer or dataset is loaded; only a local ``dataset_name`` directory is listed to
find its split files.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .config import Config
from .errors import ConfigError
from .preflight import checked_config

logger = logging.getLogger(__name__)


@dataclass
class Translation:
    config: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Losses: TRL loss_type -> (dpokit loss, its hyperparameters from the TRL values)
# ------------------------------------------------------------------------------------------------
def _beta(v):
    return {"beta": v["beta"]}


LOSS_TYPES: Dict[str, Tuple[str, Callable[[Dict[str, Any]], Dict[str, Any]]]] = {
    "sigmoid": ("dpo", _beta),
    "hinge": ("hinge", _beta),
    "ipo": ("ipo", lambda v: {"beta": v["beta"], "length_normalize": True}),
    "exo_pair": ("exo", lambda v: {"beta": v["beta"], "eps": v["label_smoothing"]}),
    "nca_pair": ("nca", _beta),
    "robust": ("rdpo", lambda v: {"beta": v["beta"], "eps": v["label_smoothing"]}),
    "bco_pair": ("bco_pair", lambda v: {"beta": v["beta"], "running_mean": False}),
    "sppo_hard": ("sppo_hard", _beta),
    "aot": ("aot", lambda v: {"beta": v["beta"], "label_smoothing": v["label_smoothing"]}),
    "aot_unpaired": ("aot_unpaired", lambda v: {"beta": v["beta"], "label_smoothing": v["label_smoothing"]}),
    "apo_zero": ("apo_zero", _beta),
    "apo_down": ("apo_down", _beta),
    "discopop": ("discopop", lambda v: {"beta": v["beta"], "tau": v["discopop_tau"]}),
    "sft": ("sft", lambda v: {"length_normalize": True}),
    "sigmoid_norm": ("sigmoid_norm", _beta),
}
SMOOTHED = {"exo_pair", "robust", "aot", "aot_unpaired"}  # the TRL losses that read label_smoothing
LOSS_KEYS = ("loss_type", "loss_weights", "beta", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef",
             "discopop_tau", "rpo_alpha", "ld_alpha", "use_weighting")
TRL_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "f_divergence_type": "reverse_kl",
                "f_alpha_divergence_coef": 0.5, "discopop_tau": 0.05}


# ------------------------------------------------------------------------------------------------
# Plain keys: TRL key -> dpokit path (value converted by the function, None = as is)
# ------------------------------------------------------------------------------------------------
def _as_int(key: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _scheduler(key, value):
    if not isinstance(value, str):
        raise ValueError(f"expected a scheduler name, got {value!r}")
    names = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
    if value not in names:
        raise ValueError(f"{value!r} has no dpokit equivalent; dpokit has linear, cosine, constant and "
                         "constant_with_warmup")
    return names[value]


def _report_to(key, value, warnings):
    if value is not None and not isinstance(value, (str, list)):
        raise ValueError(f"expected a tracker name or a list of them, got {value!r}")
    values = [value] if isinstance(value, str) else list(value or [])
    known = ("tensorboard", "wandb", "mlflow")
    out = []
    for name in values:
        if name in ("none", None):
            continue
        if name == "all":
            out.extend(known)
        elif name in known:
            out.append(name)
        else:
            warnings.append(f"report_to: {name!r} is not a dpokit tracker (tensorboard, wandb, mlflow); "
                            "metrics still go to metrics.jsonl")
    return sorted(set(out), key=out.index)


SIMPLE: Dict[str, Tuple[str, Optional[Callable]]] = {
    "model_name_or_path": ("model.name_or_path", None),
    "model_revision": ("model.revision", None),
    "attn_implementation": ("model.attn_implementation", None),
    "trust_remote_code": ("model.trust_remote_code", None),
    "gradient_checkpointing": ("model.gradient_checkpointing", None),
    "torch_compile": ("model.compile", None),
    "lora_r": ("lora.r", _as_int),
    "lora_alpha": ("lora.alpha", _as_int),
    "lora_dropout": ("lora.dropout", None),
    "lora_target_modules": ("lora.target_modules", None),
    "use_peft": ("lora.enabled", None),
    "precompute_ref_log_probs": ("reference.precompute", None),
    "learning_rate": ("train.lr", None),
    "per_device_train_batch_size": ("train.batch_size", _as_int),
    "per_device_eval_batch_size": ("train.eval_batch_size", _as_int),
    "gradient_accumulation_steps": ("train.grad_accum", _as_int),
    "num_train_epochs": ("train.epochs", lambda k, v: _fractional_epochs(v)),
    "lr_scheduler_type": ("train.scheduler", _scheduler),
    "weight_decay": ("train.weight_decay", None),
    "adam_epsilon": ("train.adam_eps", None),
    "max_grad_norm": ("train.max_grad_norm", lambda k, v: v or None),
    "seed": ("train.seed", _as_int),
    "output_dir": ("train.output_dir", None),
    "save_total_limit": ("train.keep_last", _as_int),
    "disable_tqdm": ("train.progress_bar", lambda k, v: not v),
    "group_by_length": ("train.group_by_length", None),
    "train_sampling_strategy": ("train.group_by_length", lambda k, v: _sampling(v)),
}


def _sampling(value):
    if value not in ("random", "group_by_length"):
        raise ValueError(f"{value!r} is not supported; dpokit shuffles (random) or groups by length")
    return value == "group_by_length"


def _fractional_epochs(value):
    try:
        return _as_int("num_train_epochs", value)
    except ValueError:
        raise ValueError(f"{value!r}: dpokit trains whole epochs; give max_steps for a part of an epoch") from None


# Keys that change nothing dpokit trains: accepted with this warning.
HARMLESS = {
    "push_to_hub": "dpokit does not upload; push final/ yourself (huggingface-cli upload)",
    "hub_model_id": "dpokit does not upload to the hub", "hub_strategy": "dpokit does not upload to the hub",
    "hub_token": "dpokit does not upload to the hub", "hub_private_repo": "dpokit does not upload to the hub",
    "hub_always_push": "dpokit does not upload to the hub", "hub_revision": "dpokit does not upload to the hub",
    "run_name": "dpokit names a run by its output_dir", "project": "dpokit names a run by its output_dir",
    "trackio_space_id": "trackio is not a dpokit tracker", "logging_dir": "dpokit logs under output_dir",
    "logging_first_step": "dpokit logs every log_every steps from step 1",
    "logging_nan_inf_filter": "dpokit skips non-finite steps (train.max_bad_steps)",
    "log_level": "use dpokit -v for debug logs", "log_level_replica": "dpokit logs on the main process",
    "log_on_each_node": "dpokit logs on the main process",
    "dataloader_num_workers": "dpokit tokenizes up front", "dataloader_pin_memory": "dpokit tokenizes up front",
    "dataloader_persistent_workers": "dpokit tokenizes up front", "dataloader_prefetch_factor": "dpokit tokenizes up front",
    "dataset_num_proc": "dpokit tokenizes in one process", "remove_unused_columns": "dpokit reads only its columns",
    "pad_to_multiple_of": "padding changes no value; dpokit pads to the longest sequence",
    "precompute_ref_batch_size": "dpokit precomputes with the training batch size",
    "use_liger_kernel": "dpokit never builds the [batch, length, vocab] logits (chunked projection)",
    "activation_offloading": "memory only; not offered by dpokit", "torch_empty_cache_steps": "memory only",
    "gradient_checkpointing_kwargs": "dpokit checkpoints with use_reentrant: false",
    "use_logits_to_keep": "dpokit projects only completion positions",
    "ignore_bias_buffers": "a DDP workaround dpokit does not need", "save_only_model": "dpokit checkpoints include "
    "the optimizer so --resume continues exactly", "skip_memory_metrics": "no effect", "do_train": "no effect",
    "do_eval": "no effect", "do_predict": "no effect", "overwrite_output_dir": "dpokit resumes with --resume",
    "generate_during_eval": "use dpokit eval --generate N", "dataset_streaming": "dpokit reads the split fully",
    "tf32": "dpokit keeps PyTorch's matmul precision setting", "local_rank": "set by the launcher",
    "ddp_timeout": "set by the launcher", "padding_value": "padding changes no value",
    "label_pad_token_id": "padding changes no value", "use_num_logits_to_keep": "dpokit projects only completions",
}

# Keys dpokit cannot express: an error with the reason (and what to do).
UNSUPPORTED = {
    "datasets": "dataset mixtures are not supported; give one dataset_name or a local file",
    "model_init_kwargs": "give its entries as keys (dtype, attn_implementation, trust_remote_code, model_revision)",
    "load_in_4bit": "dpokit does not train quantized models", "load_in_8bit": "dpokit does not train quantized models",
    "bnb_4bit_quant_type": "dpokit does not train quantized models",
    "use_bnb_nested_quant": "dpokit does not train quantized models",
    "bnb_4bit_quant_storage": "dpokit does not train quantized models",
    "use_rslora": "dpokit's LoRA has no rsLoRA scaling", "use_dora": "dpokit's LoRA has no DoRA",
    "lora_modules_to_save": "dpokit's LoRA trains only the adapters",
    "lora_target_parameters": "dpokit's LoRA targets modules (lora_target_modules)",
    "router_aux_loss_coef": "dpokit adds no MoE load-balancing loss",
    "max_completion_length": "dpokit cuts completions only to fit max_length (set max_length, max_prompt_length)",
    "reference_free": "use a reference-free dpokit loss instead (e.g. --set loss.name=simpo)",
    "ref_model_init_kwargs": "the reference is a frozen copy of the policy in dpokit",
    "model_adapter_name": "dpokit's LoRA reference is the adapter-disabled policy",
    "ref_adapter_name": "dpokit's LoRA reference is the adapter-disabled policy",
    "force_use_ref_model": "dpokit's LoRA reference is the adapter-disabled policy",
    "is_encoder_decoder": "dpokit trains causal LMs only", "tools": "tool schemas are not rendered by dpokit",
    "pad_token": "set the tokenizer's pad token in the model directory",
    "label_smoothing_factor": "this is the SFT cross-entropy smoothing; DPO's is label_smoothing",
    "resume_from_checkpoint": "use dpokit train --from-trl FILE --resume",
    "optim_args": "dpokit's optimizer is AdamW with adam_beta1/2, adam_epsilon, weight_decay",
    "lr_scheduler_kwargs": "dpokit's schedules take no extra arguments",
    "fsdp": "launch with accelerate and a config from examples/accelerate/",
    "fsdp_config": "launch with accelerate and a config from examples/accelerate/",
    "deepspeed": "launch with accelerate and a config from examples/accelerate/",
    "data_seed": "dpokit orders the data from seed alone",
    "eval_on_start": "dpokit evaluates every eval_steps", "load_best_model_at_end": "dpokit keeps final/ and "
    "the last checkpoints", "metric_for_best_model": "dpokit keeps final/ and the last checkpoints",
    "neftune_noise_alpha": "dpokit adds no embedding noise", "auto_find_batch_size": "give the batch size",
    "full_determinism": "dpokit's data order and RNG already follow seed", "use_cpu": "run without GPUs visible",
}
ADAMW = ("adamw_torch", "adamw_torch_fused", "adamw_hf")
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_task_type")


class _Builder:
    def __init__(self, raw: Mapping[str, Any]):
        self.raw = dict(raw)
        self.used: set = set()
        self.out: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self.errors: List[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent or null), marking the key as handled."""
        self.used.add(key)
        return self.peek(key, default)

    def peek(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def int(self, key: str, default: Any = None) -> Any:
        """``get`` for a whole number; a bad value is recorded as an error naming the key."""
        value = self.get(key, default)
        try:
            return value if value is None else _as_int(key, value)
        except ValueError as err:
            self.error(key, str(err))
            return default

    def float(self, key: str, default: Any = None) -> Any:
        """``get`` for a number (YAML may give "1e-6" as a string); a bad value is an error naming the key."""
        value = self.get(key, default)
        try:
            if isinstance(value, bool) or value is None:
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            if value is not None:
                self.error(key, f"expected a number, got {value!r}")
            return default

    def steps(self, key: str, default: Any) -> Any:
        """A number of steps; TrainingArguments' fractions of the run (< 1) are refused."""
        value = self.get(key, default)
        if isinstance(value, float) and 0 < value < 1:
            self.error(key, "a fraction of the run is not supported; give a number of steps")
            return None
        try:
            return _as_int(key, value)
        except ValueError as err:
            self.error(key, str(err))
            return None

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def set(self, path: str, value: Any) -> None:
        section, name = path.split(".", 1)
        self.out.setdefault(section, {})[name] = value

    def error(self, key: str, message: str) -> None:
        self.used.add(key)
        self.errors.append(f"{key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.used.add(key)
        self.warnings.append(f"{key}: {message}")


def translate(raw: Mapping[str, Any], source: str = "TRL config") -> Translation:
    """TRL ``trl dpo`` YAML mapping -> :class:`Translation`; raises ConfigError naming ``source`` and the key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of TRL options")
    b = _Builder(raw)
    for section in (_model, _data, _loss, _train):
        try:
            section(b)
        except (TypeError, ValueError) as err:  # a value of a type no handler expects
            raise ConfigError(f"{source}: {' '.join(b.errors + [str(err)])}") from None
    for key in sorted(set(b.raw) - b.used, key=str):
        if key in SIMPLE:
            path, convert = SIMPLE[key]
            if b.raw[key] is None:
                continue
            try:
                b.set(path, convert(key, b.raw[key]) if convert else b.raw[key])
            except (TypeError, ValueError) as err:
                b.error(key, str(err))
        elif key in HARMLESS:
            b.warn(key, f"not used ({HARMLESS[key]})")
        elif key in UNSUPPORTED:
            if b.raw[key] in (None, False, [], {}, "", "no"):
                b.warn(key, f"not used (set to {b.raw[key]!r}; {UNSUPPORTED[key]})")
            else:
                b.error(key, f"not supported: {UNSUPPORTED[key]}")
        else:
            known = list(SIMPLE) + list(HARMLESS) + list(UNSUPPORTED) + KNOWN_HANDLED
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else " (see docs/migrating-from-trl.md for the keys)"
            b.error(str(key), f"unknown TRL DPO option{hint}")
    if b.errors:
        raise ConfigError(f"{source}: " + "; ".join(b.errors))
    return Translation(b.out, b.warnings)


KNOWN_HANDLED = ["dtype", "torch_dtype", "lora_task_type", "dataset_name", "dataset_config", "dataset_train_split",
                 "dataset_test_split", "max_length", "max_prompt_length", "truncation_mode", "padding_free",
                 "disable_dropout", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "max_steps",
                 "warmup_ratio", "warmup_steps", "adam_beta1", "adam_beta2", "optim", "bf16", "fp16", "report_to",
                 "logging_steps", "logging_strategy", "eval_strategy", "evaluation_strategy", "eval_steps",
                 "save_strategy", "save_steps", "env", *LOSS_KEYS]


# ------------------------------------------------------------------------------------------------
def _model(b: _Builder) -> None:
    if not b.has("model_name_or_path"):
        b.error("model_name_or_path", "required (a local model directory or a hub id)")
    dtype = b.get("dtype") if b.has("dtype") else b.get("torch_dtype", "float32")  # TRL ModelConfig: float32
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        b.error("dtype", f"{dtype!r} is not one of auto, float32, bfloat16, float16")
    b.set("model.dtype", dtype)
    b.set("model.gradient_checkpointing", True)  # TRL's default; an explicit key overrides it
    if b.peek("use_peft", False):
        b.set("lora.target_modules", None)  # TRL passes None: PEFT's per-architecture default modules
    else:
        for key in LORA_KEYS:
            if b.has(key):
                b.warn(key, "not used: use_peft is not true (as in TRL)")
    if b.get("lora_task_type", "CAUSAL_LM") != "CAUSAL_LM":
        b.error("lora_task_type", "dpokit trains causal LMs only (CAUSAL_LM)")


def _local_split_file(directory: str, split: str) -> Optional[str]:
    found = [name for name in sorted(os.listdir(directory))
             if os.path.splitext(name)[0] == split and name.endswith((".jsonl", ".json", ".parquet", ".csv"))]
    return os.path.join(directory, found[0]) if len(found) == 1 else None


def _dataset(b: _Builder, split: str, key: str) -> Optional[str]:
    """A dpokit data source for ``dataset_name`` at ``split`` (a file of a local directory, or the hub id)."""
    name = b.raw["dataset_name"]
    if not isinstance(name, str):
        b.error("dataset_name", f"expected a hub id or a directory, got {name!r}")
        return None
    if os.path.isdir(name):
        found = _local_split_file(name, split)
        if found is None:
            b.error(key, f"{name} has no single {split}.jsonl/.json/.parquet/.csv file for split {split!r}")
        return found
    return name


def _data(b: _Builder) -> None:
    if not b.has("dataset_name"):
        if b.has("datasets"):
            return  # named by UNSUPPORTED
        b.error("dataset_name", "required (a hub dataset id or a local directory with <split>.jsonl)")
        return
    b.used.add("dataset_name")
    if b.has("dataset_config"):
        b.error("dataset_config", "dpokit cannot select a hub dataset configuration (no data option for it); "
                "save the split to JSONL (datasets.load_dataset(name, config, split=...).to_json(FILE)) and give "
                "its directory as dataset_name")
    b.used.add("dataset_config")
    split = b.get("dataset_train_split", "train")
    train = _dataset(b, split, "dataset_train_split")
    if train is not None:
        b.set("data.train", train)
        if not os.path.exists(train):
            b.set("data.split", split)
    test_split = b.get("dataset_test_split", "test")
    strategy = b.get("eval_strategy", b.get("evaluation_strategy", "no"))
    if strategy == "no":
        if b.has("dataset_test_split"):
            b.warn("dataset_test_split", "not used: eval_strategy is 'no' (as in TRL)")
        if b.has("eval_steps"):
            b.warn("eval_steps", "not used: eval_strategy is 'no' (as in TRL)")
        b.set("train.eval_every", 0)
    elif strategy == "steps":
        evaluation = _dataset(b, test_split, "dataset_test_split")
        if evaluation is not None and not os.path.exists(evaluation) and test_split != split:
            b.error("dataset_test_split", "dpokit reads a hub dataset's eval set from the same split as "
                    "training (data.split); save the test split to a file and give dataset_name as a directory")
        elif evaluation is not None:
            b.set("data.eval", evaluation)
        key = "eval_steps" if b.has("eval_steps") else "logging_steps"  # TrainingArguments' fallback
        steps = b.steps(key, 10)
        if steps is not None:
            b.set("train.eval_every", steps)
    else:
        b.error("eval_strategy", f"{strategy!r} is not supported; use 'steps' with eval_steps, or 'no'")
    if "max_length" in b.raw and b.raw["max_length"] is None:
        b.error("max_length", "null (no truncation) is not supported; give a number of tokens")
    else:
        b.set("data.max_length", b.get("max_length", 1024))  # DPOConfig default 1024 (dpokit: 512)
    mode = b.get("truncation_mode")
    if b.has("max_prompt_length"):  # TRL < 1.0: the prompt is shortened first, keep_end by default
        b.set("data.max_prompt_length", b.int("max_prompt_length"))
        b.set("data.truncation_mode", mode or "keep_end")
    elif mode == "keep_end":
        b.error("truncation_mode", "TRL's keep_end cuts prompt+completion from the left, which dpokit does not "
                "do; set max_prompt_length to shorten long prompts from the left (keep_end), or use keep_start")
    elif mode not in (None, "keep_start"):
        b.error("truncation_mode", f"{mode!r} is not keep_start or keep_end")
    if b.get("padding_free", False):
        b.set("train.layout", "packed")
    if b.get("disable_dropout", True) is False:
        pass  # dpokit keeps the model's dropout, as TRL does with disable_dropout: false
    elif b.has("disable_dropout"):
        b.warn("disable_dropout", "dpokit keeps the model's dropout modules; with a model whose dropout is not "
               "0 set it to 0 in its config.json")
    if b.get("sync_ref_model", False):
        b.set("reference.sync_every", b.int("ref_model_sync_steps", 512))
        b.set("reference.sync_alpha", b.float("ref_model_mixup_alpha", 0.6))
    else:
        for key in ("ref_model_sync_steps", "ref_model_mixup_alpha"):
            if b.has(key):
                b.warn(key, "not used: sync_ref_model is not true (as in TRL)")


# ------------------------------------------------------------------------------------------------
def _loss(b: _Builder) -> None:
    values = {key: (b.get(key, default) if isinstance(default, str) else b.float(key, default))
              for key, default in TRL_DEFAULTS.items()}
    types = b.get("loss_type", ["sigmoid"])
    if not isinstance(types, (str, list)) or not all(isinstance(t, str) for t in ([types] if isinstance(types, str)
                                                                               else types)):
        b.error("loss_type", f"expected a loss type or a list of them, got {types!r}")
        return
    types = [types] if isinstance(types, str) else list(types)
    weights = b.get("loss_weights")
    if weights is not None and not isinstance(weights, list):
        weights = [weights]
    if weights is not None and len(weights) != len(types):
        b.error("loss_weights", f"{len(weights)} weights for {len(types)} loss types")
        return
    if weights is not None and not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        b.error("loss_weights", f"expected a list of numbers, got {weights!r}")
        return
    weights = [float(w) for w in weights] if weights is not None else [1.0] * len(types)
    f_div = values["f_divergence_type"]
    smoothing = values["label_smoothing"]
    components = []
    for kind, weight in zip(types, weights):
        if kind not in LOSS_TYPES:
            close = difflib.get_close_matches(str(kind), list(LOSS_TYPES), n=1)
            b.error("loss_type", f"unknown TRL loss type {kind!r}" + (f"; did you mean '{close[0]}'?" if close else
                    f"; TRL's are {', '.join(LOSS_TYPES)}"))
            continue
        name, hparams = LOSS_TYPES[kind]
        hp = hparams(values)
        if kind == "sigmoid" and smoothing:
            if f_div != "reverse_kl":
                b.error("label_smoothing", "with f_divergence_type: dpokit has no label-smoothed f-DPO")
            b.warn("label_smoothing", f"{smoothing} with loss_type sigmoid trains conservative DPO (dpokit cdpo), "
                   "as TRL < 1.0 did; TRL >= 1.0 ignores label_smoothing for sigmoid (loss_type robust is rDPO)")
            name, hp = "cdpo", {"beta": values["beta"], "eps": smoothing}
        if kind == "exo_pair" and not smoothing:
            b.error("label_smoothing", "must be > 0 with loss_type exo_pair (as in TRL; the EXO paper uses 1e-3)")
        if f_div != "reverse_kl" and kind != "sft":
            if kind != "sigmoid":
                b.error("f_divergence_type", f"dpokit applies f-divergences to the sigmoid (DPO) loss only, "
                        f"not to {kind!r}")
            else:  # TRL's f_alpha_divergence_coef a' is 1 - alpha of the paper (dpokit fdpo's alpha)
                name, hp = "fdpo", {"beta": values["beta"], "f_divergence_type": f_div,
                                    "alpha": 1.0 - values["f_alpha_divergence_coef"]}
        components.append({"name": name, "weight": weight, **hp})
    if smoothing and not any(k in SMOOTHED or k == "sigmoid" for k in types):
        b.warn("label_smoothing", f"has no effect on loss_type {types} (as in TRL)")
    if b.has("rpo_alpha"):  # TRL < 1.0: DPO + rpo_alpha * NLL of the chosen completion
        components.append({"name": "sft", "weight": b.float("rpo_alpha", 0.0), "length_normalize": True})
    modifiers: Dict[str, Any] = {}
    if b.has("ld_alpha"):
        modifiers["ld_alpha"] = {"alpha": b.float("ld_alpha", 1.0), "apply_to_reference": True}
        if any(c["name"] == "sft" for c in components):
            b.warn("ld_alpha", "dpokit's sft term then reads the length-desensitised chosen log-prob; TRL's "
                   "sft term reads the plain one")
    if b.get("use_weighting", False):
        modifiers["wpo"] = {"clamp": False}  # TRL >= 1.0 does not cap the WPO weight at 1
    if not components:
        return
    if len(components) == 1 and components[0]["weight"] == 1.0:
        loss = {k: v for k, v in components[0].items() if k != "weight"}
    else:
        loss = {"components": components}
    if modifiers:
        loss["modifiers"] = modifiers
    b.out["loss"] = loss


# ------------------------------------------------------------------------------------------------
def _train(b: _Builder) -> None:
    defaults = {"lr": 1e-6, "epochs": 3, "scheduler": "linear", "warmup_ratio": 0.0, "log_every": 10,
                "save_every": 500, "report_to": [], "output_dir": "trainer_output"}
    for key, value in defaults.items():  # TRL / TrainingArguments defaults where dpokit's differ
        b.set(f"train.{key}", value)
    steps = b.int("max_steps", -1)
    if steps is not None and steps > 0:
        b.set("train.max_steps", steps)
    warmup_steps, ratio = b.float("warmup_steps", 0.0), b.float("warmup_ratio", 0.0)
    if warmup_steps and ratio:
        b.error("warmup_steps", "give warmup_steps or warmup_ratio, not both")
    elif warmup_steps and warmup_steps >= 1:
        b.set("train.warmup_steps", b.int("warmup_steps"))
    elif warmup_steps or ratio:
        b.set("train.warmup_ratio", float(warmup_steps or ratio))
        b.warnings.append("warmup: dpokit rounds warmup_ratio * steps down, transformers rounds it up; give "
                          "warmup_steps as a whole number for the same schedule")
    if b.peek("lr_scheduler_type") == "constant" and (warmup_steps or ratio):
        b.warn("lr_scheduler_type", "constant ignores warmup in TRL; dpokit drops the warmup too")
        b.set("train.warmup_ratio", 0.0)
        b.out["train"].pop("warmup_steps", None)
    betas = [b.float("adam_beta1", 0.9), b.float("adam_beta2", 0.999)]
    if b.has("adam_beta1") or b.has("adam_beta2"):
        b.set("train.adam_betas", betas)
    optim = b.get("optim", "adamw_torch_fused")
    if optim not in ADAMW:
        b.error("optim", f"{optim!r} is not supported; dpokit trains with AdamW ({', '.join(ADAMW)})")
    bf16, fp16 = b.get("bf16"), b.get("fp16", False)
    if bf16 and fp16:
        b.error("fp16", "bf16 and fp16 are both true")
    b.set("train.mixed_precision", "fp16" if fp16 else ("no" if bf16 is False else "bf16"))  # TRL: bf16 unless fp16
    if b.has("report_to"):
        try:
            b.set("train.report_to", _report_to("report_to", b.get("report_to"), b.warnings))
        except ValueError as err:
            b.error("report_to", str(err))
    strategy = b.get("logging_strategy", "steps")
    logging_steps = b.steps("logging_steps", 10)
    if strategy == "no":
        b.set("train.log_every", 0)
    elif strategy != "steps":
        b.error("logging_strategy", f"{strategy!r} is not supported; use 'steps' with logging_steps")
    elif logging_steps is not None:
        b.set("train.log_every", logging_steps)
    save = b.get("save_strategy", "steps")
    if save == "no":
        b.set("train.save_every", 0)
    elif save != "steps":
        b.error("save_strategy", f"{save!r} is not supported; use 'steps' with save_steps, or 'no'")
    elif b.has("save_steps"):
        value = b.steps("save_steps", 500)
        if value is not None:
            b.set("train.save_every", value)
    if b.has("env"):
        env = b.get("env")
        names = ", ".join(map(str, env)) if isinstance(env, Mapping) else repr(env)
        b.warn("env", f"not applied by dpokit; export {names} before running")


# ------------------------------------------------------------------------------------------------
def read_trl_yaml(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise ConfigError(f"TRL config file not found: {path}")
    with open(path, "r", encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of TRL options")
    return raw


def load_trl_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Read a ``trl dpo`` YAML, translate it (warnings logged), apply ``--set`` overrides, validate."""
    translation = translate(read_trl_yaml(path), source=path)
    for message in translation.warnings:
        logger.warning("%s: %s", path, message)
    try:
        return checked_config(translation.config, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path} (translated from TRL): {err}") from None
