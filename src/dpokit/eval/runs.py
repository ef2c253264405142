"""Reading run directories: models to evaluate, the config, metrics and evaluation files.

A run directory is what ``dpokit train`` writes (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``,
``final/``) or what ``dpokit demo`` writes (the same under ``train/``, plus ``summary.json``,
``warmup/``). ``dpokit eval --output RUN_DIR`` adds ``eval.json`` and ``samples.jsonl``; evaluations
of single checkpoints can go to ``RUN_DIR/eval/<name>.json``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..io import read_jsonl
from ..paths import UnsafePathError, safe_join

STEP = re.compile(r"step-0*(\d+)")


def training_dir(run_dir: str) -> str:
    """The directory holding ``config.yaml``/``metrics.jsonl``: the run itself or its ``train/``."""
    for candidate in (run_dir, os.path.join(run_dir, "train")):
        if os.path.exists(os.path.join(candidate, "config.yaml")) or os.path.exists(os.path.join(candidate, "metrics.jsonl")):
            return candidate
    return run_dir


def read_config(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(training_dir(run_dir), "config.yaml")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def read_json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def eval_files(run_dir: str) -> List[str]:
    """``eval*.json`` in the run (and its ``train/``) and every ``*.json`` under ``RUN/eval/``."""
    found = []
    for base in dict.fromkeys((run_dir, training_dir(run_dir))):
        found += sorted(glob.glob(os.path.join(base, "eval*.json")))
        found += sorted(glob.glob(os.path.join(base, "eval", "*.json")))
    return list(dict.fromkeys(found))


@dataclass
class Run:
    path: str
    name: str
    config: Dict[str, Any] = field(default_factory=dict)
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    summary: Optional[Dict[str, Any]] = None
    evals: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # file name -> eval json
    samples: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def main_eval(self) -> Optional[Dict[str, Any]]:
        """``eval.json`` when present, else the eval of the latest step."""
        if not self.evals:
            return None
        for name, value in self.evals.items():
            if os.path.basename(name) == "eval.json":
                return value
        return sorted(self.evals.values(), key=lambda e: e.get("step") or 0)[-1]

    @property
    def loss_name(self) -> Optional[str]:
        loss = self.config.get("loss") or {}
        if "name" in loss:
            return str(loss["name"])
        if "components" in loss:
            return " + ".join(str(c.get("name")) for c in loss["components"])
        return (self.summary or {}).get("loss")

    @property
    def beta(self) -> Optional[float]:
        loss = self.config.get("loss") or {}
        value = loss.get("beta")
        if value is None and self.main_eval:
            value = self.main_eval.get("beta")
        return value

    def last(self, key: str) -> Optional[float]:
        for record in reversed(self.metrics):
            if isinstance(record.get(key), (int, float)):
                return record[key]
        return None

    def series(self, key: str) -> Tuple[List[float], List[float]]:
        steps, values = [], []
        for record in self.metrics:
            value = record.get(key)
            if isinstance(value, (int, float)) and isinstance(record.get("step"), (int, float)):
                steps.append(record["step"])
                values.append(value)
        return steps, values


def load_run(path: str, name: Optional[str] = None) -> Run:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run directory not found: {path}")
    train = training_dir(path)
    run = Run(path=path, name=name or os.path.basename(os.path.normpath(path)) or path)
    run.config = read_config(path)
    run.metrics = read_jsonl(os.path.join(train, "metrics.jsonl"))
    run.summary = read_json(os.path.join(path, "summary.json")) or read_json(os.path.join(train, "summary.json"))
    for file in eval_files(path):
        try:
            data = read_json(file)
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(data, dict):
            if data.get("step") is None:
                match = STEP.search(os.path.basename(file)) or STEP.search(str(data.get("model") or ""))
                if match:
                    data["step"] = int(match.group(1))
            run.evals[file] = data
    main = run.main_eval
    if main and main.get("samples_file"):
        directory = os.path.dirname([f for f, v in run.evals.items() if v is main][0])
        try:  # the name comes from a file on disk: it must stay inside that file's directory
            run.samples = read_jsonl(safe_join(directory, str(main["samples_file"])))
        except UnsafePathError:
            run.samples = []
    return run


def unique_names(paths: List[str]) -> List[str]:
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(p) for p in paths]


# ---- models to evaluate ---------------------------------------------------------------------------

def resolve_model_path(path: str) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """``(kind, run_dir, config)`` for a ``--model`` argument: ``"model"`` (a directory
    ``from_pretrained`` loads or a hub id), ``"run"`` (a run directory: its ``final/`` is used) or
    ``"checkpoint"`` (``RUN/checkpoints/step-N``: the run's base model plus the checkpoint weights)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return "model", _run_above(path), read_config(_run_above(path)) if _run_above(path) else {}
        if os.path.exists(os.path.join(path, "trainer_state.json")) and os.path.exists(os.path.join(path, "model.safetensors")):
            run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            return "checkpoint", run, read_config(run)
        train = training_dir(path)
        if any(os.path.exists(os.path.join(train, "final", name)) for name in ("config.json", "model_index.json")):
            return "run", train, read_config(train)  # model_index.json: a diffusion pipeline's final/
    return "model", None, {}


def _run_above(path: str) -> Optional[str]:
    parent = os.path.dirname(os.path.abspath(path))
    return parent if os.path.exists(os.path.join(parent, "config.yaml")) else None


def default_reference(config: Dict[str, Any]) -> Optional[str]:
    """The reference a training run used, when it is a loadable model path: ``reference.path``, or
    the initial model for ``copy``/``lora_disabled``/``auto`` (the merged LoRA final's base)."""
    reference = config.get("reference") or {}
    kind = reference.get("kind", "auto")
    if kind == "none":
        return None
    if reference.get("path"):
        return reference["path"]
    return (config.get("model") or {}).get("name_or_path") or None


def model_kind(config: Optional[Dict[str, Any]], model_kind: Optional[str] = None) -> str:
    """``model.kind`` of an evaluated model: ``model_kind`` when given, else the run's, else causal_lm."""
    return model_kind or ((config or {}).get("model") or {}).get("kind") or "causal_lm"


def load_model_for_eval(path: str, trust_remote_code: bool = False, kind_of_model: Optional[str] = None):
    """Load ``path`` (model dir, run dir, or checkpoint dir) -> ``(model, tokenizer, info)``;
    ``info`` has ``kind``, ``run_dir``, ``config`` (the run's config.yaml, when known), ``step``,
    ``model_kind``. The model and its tokenizer (a vision-language model: its processor) load the
    way the family of ``model.kind`` (the run's, or ``kind_of_model``) declares."""
    import torch

    from .. import families  # noqa: F401  (registers how each model.kind loads)
    from ..config import ModelConfig
    from ..models import load_causal_lm, load_named

    kind, run_dir, config = resolve_model_path(path)
    info: Dict[str, Any] = {"kind": kind, "run_dir": run_dir, "config": config, "step": None,
                            "model_kind": model_kind(config, kind_of_model)}
    model_cfg = ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code, kind=info["model_kind"])
    load_tokenizer = lambda where, _trust: load_named(where, model_cfg, "--model", tokenizer=True)[0]  # noqa: E731
    if kind == "run":
        target = os.path.join(run_dir, "final")
        model = load_causal_lm(target, model_cfg)
        tokenizer = load_tokenizer(target, trust_remote_code)
        info["resolved"] = target
    elif kind == "checkpoint":
        from safetensors.torch import load_file

        base = (config.get("model") or {}).get("name_or_path")
        if not base:
            raise FileNotFoundError(f"{path}: a checkpoint needs its run's config.yaml to find the base model")
        model = load_causal_lm(base, model_cfg)
        tokenizer = load_tokenizer(base, trust_remote_code)
        state = load_file(os.path.join(path, "model.safetensors"))
        lora = config.get("lora") or {}
        if lora.get("enabled"):
            from ..config import from_dict
            from ..models import apply_lora

            model = apply_lora(model, from_dict({**config, "model": {**config["model"]}}))
        missing = [k for k in state if k not in dict(model.named_parameters())]
        if missing:
            raise ValueError(f"{path}: checkpoint tensors do not match the model (e.g. {missing[0]})")
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].dtype))
        if lora.get("enabled"):
            model = model.merge_and_unload()
        with open(os.path.join(path, "trainer_state.json")) as handle:
            info["step"] = json.load(handle).get("step")
        info["resolved"] = path
    else:
        model = load_causal_lm(path, model_cfg)
        tokenizer = load_tokenizer(path, trust_remote_code)
        info["resolved"] = path
    return model.eval(), tokenizer, info
