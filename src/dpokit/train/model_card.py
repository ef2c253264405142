"""``final/README.md``: a Hugging Face model card for a trained policy.

YAML front matter (what the hub reads: ``base_model``, ``library_name: transformers`` so the hub's
widget and "Use this model" snippets work, ``pipeline_tag``, ``tags`` with ``dpokit`` and the loss
names, ``datasets``, ``license`` when the base model's own card states one), then the base model,
the data, the loss and its hyperparameters, the training hyperparameters, the final metrics (last
training and evaluation lines of ``metrics.jsonl``), the evaluation (``eval.json``) and how to load
the model. The hub validates ``base_model`` and ``datasets`` as hub ids, so local paths go into the
text only.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from ..losses import build_loss

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# the training hyperparameters a card lists (train.* keys), in this order
_TRAIN_KEYS = ("seed", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "scheduler", "warmup_ratio",
               "warmup_steps", "weight_decay", "adam_betas", "adam_eps", "max_grad_norm", "mixed_precision",
               "layout", "group_by_length")
_TRAIN_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                  "logps/chosen", "logps/rejected", "grad_norm", "lr", "epoch", "tokens")
_EVAL_SUMMARY = ("preference_accuracy", "reward_margin_mean", "loss", "num_pairs", "judge_reward", "win_rate",
                 "kl", "length_mean", "distinct_2", "reward", "num_prompts")


def is_hub_id(value: Any) -> bool:
    """``name`` or ``org/name`` that is not a local path (what the hub accepts as ``base_model``)."""
    if not isinstance(value, str) or not value or len(value) > 96 or os.path.exists(value):
        return False
    if ".." in value or "--" in value or value.endswith((".", "-")) or value.lower().endswith(_DATA_SUFFIXES):
        return False
    return bool(_HUB_ID.match(value))


def write_model_card(final_dir: str, config: Any, metrics: Union[None, str, Sequence[Dict[str, Any]]] = None,
                     eval_summary: Union[None, str, Dict[str, Any]] = None,
                     num_examples: Optional[Dict[str, int]] = None) -> str:
    """Write ``<final_dir>/README.md`` and return its path.

    ``config``: the run's :class:`dpokit.config.Config` (or its ``to_dict()``). ``metrics``: the records
    of ``metrics.jsonl`` or its path; ``eval_summary``: the dict of ``eval.json`` or its path. Left
    out, both are read from the run directory (the parent of ``final_dir``) when they are there.
    ``num_examples``: e.g. ``{"train": 1200, "eval": 64}``, the examples the run trained and
    evaluated on."""
    from ..paths import safe_join

    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    run_dir = os.path.dirname(os.path.abspath(os.path.normpath(final_dir)))
    records = _records(metrics if metrics is not None else os.path.join(run_dir, "metrics.jsonl"))
    summary = _summary(eval_summary if eval_summary is not None else os.path.join(run_dir, "eval.json"))
    text = render_model_card(raw, records, summary, num_examples, name=os.path.basename(run_dir) or "model")
    os.makedirs(final_dir, exist_ok=True)
    path = safe_join(final_dir, "README.md")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def render_model_card(raw: Dict[str, Any], records: List[Dict[str, Any]], summary: Optional[Dict[str, Any]],
                      num_examples: Optional[Dict[str, int]] = None, name: str = "model") -> str:
    model, data, train = raw.get("model", {}), raw.get("data", {}), raw.get("train", {})
    lora = raw.get("lora", {}) or {}
    base = model.get("name_or_path") or ""
    parts = _loss_parts(raw.get("loss", {}))
    front: Dict[str, Any] = {}
    if is_hub_id(base):
        front["base_model"] = base
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    front["model_name"] = name
    tags = ["dpokit", "preference-optimization"] + [n for n, _, _, _ in parts]
    if lora.get("enabled"):
        tags.append("lora")
    front["tags"] = list(dict.fromkeys(t for t in tags if t))
    datasets = [s for s in (data.get("train"), data.get("eval")) if is_hub_id(s)]
    if datasets:
        front["datasets"] = list(dict.fromkeys(datasets))
    license_ = _base_license(base)
    if license_:
        front["license"] = license_

    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", ""]
    loss_title = " + ".join(n for n, _, _, _ in parts) or "preference optimization"
    out += [f"# {name}", "", f"A causal language model trained with dpokit ({loss_title}) from "
            f"{_base_text(base)}.", ""]

    out += ["## Base model", "", _base_text(base, long=True)]
    if model.get("revision"):
        out.append(f"Revision: `{model['revision']}`.")
    reference = raw.get("reference", {}) or {}
    if reference and _needs_reference(raw.get("loss", {})):
        out.append(f"Reference model: {_reference_text(reference, lora)}.")
    elif reference:
        out.append("Reference model: none (the loss is reference-free).")
    out.append("")

    out += ["## Data", "", "| set | source | examples |", "|---|---|---|"]
    counts = num_examples or {}
    out.append(f"| train | {_source_text(data.get('train'), data.get('split'))} | {counts.get('train', '')} |")
    if data.get("eval"):
        out.append(f"| eval | {_source_text(data.get('eval'), data.get('split'))} | {counts.get('eval', '')} |")
    elif data.get("eval_fraction"):
        out.append(f"| eval | {data['eval_fraction']:g} of the training data, held out | {counts.get('eval', '')} |")
    details = {k: data.get(k) for k in ("kind", "max_length", "max_prompt_length", "truncation_mode", "limit")
               if data.get(k) is not None}
    out += ["", _inline(details), ""]

    out += ["## Loss", ""]
    for loss_name, weight, hparams, source in parts:
        label = f"`{loss_name}`" if weight == 1.0 else f"{weight:g} x `{loss_name}`"
        out.append(f"* {label}" + (f" ({source})" if source else "") + (f": {_inline(hparams)}" if hparams else ""))
    loss_cfg = raw.get("loss", {}) or {}
    if loss_cfg.get("modifiers"):
        out.append(f"* modifiers: {_inline(loss_cfg['modifiers'])}")
    out += ["", f"Configured as: `{_compact(loss_cfg)}`", ""]

    out += ["## Training hyperparameters", "", "| key | value |", "|---|---|"]
    out += [f"| `train.{k}` | {_cell(train[k])} |" for k in _TRAIN_KEYS if train.get(k) is not None]
    if lora.get("enabled"):
        out += [f"| `lora.{k}` | {_cell(lora[k])} |" for k in ("r", "alpha", "dropout", "target_modules")
                if lora.get(k) is not None]
    out.append("")

    last_train = next((r for r in reversed(records) if "loss" in r), None)
    last_eval = next((r for r in reversed(records) if any(k.startswith("eval/") for k in r)), None)
    if last_train or last_eval:
        out += ["## Final metrics", "", "| metric | train | eval |", "|---|---|---|"]
        keys = [k for k in _TRAIN_METRICS if (last_train and k in last_train) or (last_eval and f"eval/{k}" in last_eval)]
        for key in keys:
            train_value = _number(last_train.get(key)) if last_train else ""
            eval_value = _number(last_eval.get(f"eval/{key}")) if last_eval else ""
            out.append(f"| `{key}` | {train_value} | {eval_value} |")
        steps = [f"training at step {last_train['step']}" for _ in [0] if last_train and "step" in last_train]
        steps += [f"evaluation at step {last_eval['step']}" for _ in [0] if last_eval and "step" in last_eval]
        out += ["", "From `metrics.jsonl`: " + ", ".join(steps) + "." if steps else "From `metrics.jsonl`.", ""]

    if summary:
        out += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        shown = [k for k in _EVAL_SUMMARY if isinstance(summary.get(k), (int, float))]
        shown += [k for k, v in summary.items() if k not in shown and isinstance(v, (int, float))
                  and not isinstance(v, bool)][: max(0, 20 - len(shown))]
        out += [f"| `{k}` | {_number(summary[k])} |" for k in shown]
        for stage in ("before", "after"):  # dpokit demo's summary.json layout
            if isinstance(summary.get(stage), dict):
                out.append(f"| `{stage}` | {_inline({k: v for k, v in summary[stage].items() if isinstance(v, (int, float))})} |")
        out += ["", "From `eval.json` (`dpokit eval`; definitions in dpokit's docs/evaluation.md).", ""]

    # a vision-language model (model.kind: vlm) loads with its own auto class and its processor
    auto, text_io, io_name = (("AutoModelForImageTextToText", "AutoProcessor", "processor")
                              if model.get("kind") == "vlm" else ("AutoModelForCausalLM", "AutoTokenizer", "tokenizer"))
    out += ["## How to load", "", "```python", f"from transformers import {auto}, {text_io}", "",
            f'model = {auto}.from_pretrained("path/to/final")',
            f'{io_name} = {text_io}.from_pretrained("path/to/final")', "```", ""]
    if lora.get("enabled"):
        base_hint = base if is_hub_id(base) else "path/to/base-model"
        out += ["This directory holds the LoRA-merged model; the adapter itself is in `adapter/`:", "",
                "```python", "from peft import PeftModel", f"from transformers import {auto}", "",
                f'base = {auto}.from_pretrained("{base_hint}")',
                'model = PeftModel.from_pretrained(base, "path/to/final/adapter")', "```", ""]
    out += ["Trained with dpokit (`dpokit train`); the run's `config.yaml` holds the resolved configuration.", ""]
    return "\n".join(out)


# ---- helpers --------------------------------------------------------------------------------
def _records(source) -> List[Dict[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            return []
        records = []
        with open(source, "rb") as handle:
            for raw in handle:
                try:  # a torn last line (a crash mid-write) is not a reason to lose the card
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records
    return [dict(r) for r in source]


def _summary(source) -> Optional[Dict[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            return None
        with open(source) as handle:
            value = json.load(handle)
        return value if isinstance(value, dict) else None
    return dict(source)


def _loss_parts(loss_cfg: Dict[str, Any]) -> List[Tuple[str, float, Dict[str, Any], str]]:
    """(name, weight, hyperparameters, source) of each component of the configured loss."""
    try:
        loss = build_loss(dict(loss_cfg))
    except (KeyError, ValueError, TypeError):  # a card is still written from the raw section
        name = str(loss_cfg.get("name") or "")
        hparams = {k: v for k, v in loss_cfg.items() if k not in ("name", "components", "modifiers")}
        return [(name, 1.0, hparams, "")] if name else []
    return [(part.name, weight, dict(part.hparams), getattr(part.spec, "source", "") or "")
            for weight, part in _components(loss)]


def _needs_reference(loss_cfg: Dict[str, Any]) -> bool:
    try:
        return bool(build_loss(dict(loss_cfg)).needs.reference)
    except (KeyError, ValueError, TypeError):
        return True


def _components(loss, depth: int = 0) -> Iterable[Tuple[float, Any]]:
    if depth > 5:
        return []
    if hasattr(loss, "components"):
        return [(float(w), part) for w, part in loss.components]
    if hasattr(loss, "spec") and hasattr(loss, "hparams"):
        return [(1.0, loss)]
    for attribute in ("loss", "inner", "base", "wrapped"):  # a modifier around a loss
        if hasattr(loss, attribute):
            return _components(getattr(loss, attribute), depth + 1)
    return []


def _base_text(base: str, long: bool = False) -> str:
    if not base:
        return "a model given in memory"
    if is_hub_id(base):
        link = f"[{base}](https://huggingface.co/{base})"
        return f"Fine-tuned from {link}." if long else link
    local = f"a local model (`{os.path.basename(os.path.normpath(base))}`)"
    return (f"Fine-tuned from {local}; `base_model` is left out of the metadata because it is not a hub id "
            f"(path at training time: `{base}`)." if long else local)


def _reference_text(reference: Dict[str, Any], lora: Dict[str, Any]) -> str:
    kind = reference.get("kind", "auto")
    if kind == "auto":
        kind = "path" if reference.get("path") else ("lora_disabled" if lora.get("enabled") else "copy")
    text = {"copy": "a frozen copy of the base model", "lora_disabled": "the base model (LoRA adapter disabled)",
            "none": "none (a reference-free loss)"}.get(kind)
    if kind == "path":
        text = f"`{reference.get('path')}`"
    text = text or f"`{kind}`"
    if reference.get("precompute"):
        text += ", log-probabilities precomputed"
    if reference.get("sync_every"):
        text += f", synced every {reference['sync_every']} steps (alpha {reference.get('sync_alpha')})"
    return text


def _source_text(source: Any, split: Optional[str]) -> str:
    if source is None or source == "":
        return ""
    if not isinstance(source, (str, os.PathLike)):
        return f"a `{type(source).__name__}` given in memory"
    source = os.fspath(source)
    if is_hub_id(source):
        return f"[{source}](https://huggingface.co/datasets/{source}) (split `{split or 'train'}`)"
    return f"`{_cell(os.path.basename(source))}` (local file)"


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return _cell(value)


def _compact(value: Any) -> str:
    return json.dumps(value, default=str, separators=(", ", ": "))


def _inline(values: Any) -> str:
    if isinstance(values, dict):
        return ", ".join(f"`{k}` = {_cell(_compact(v) if isinstance(v, (dict, list)) else v)}"
                         for k, v in values.items())
    return _cell(_compact(values))


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else (_compact(value) if isinstance(value, (list, dict)) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _base_license(base: str) -> Optional[str]:
    """The ``license`` of a local base model's own README.md front matter, if it has one."""
    if not base or not os.path.isdir(base):
        return None
    path = os.path.join(base, "README.md")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read(65536)
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value else None
