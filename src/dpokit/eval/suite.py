"""Full evaluation of a checkpoint against its reference (what ``dpokit eval`` runs).

:func:`evaluate_checkpoint` returns a flat JSON-able dict (keys in :data:`EVAL_KEYS` always present,
``None`` where a part was not run) and the sample rows (prompt, policy answers, reference answers,
judge scores). Every metric is defined in docs/evaluation.md:

* on held-out pairs: implicit-reward accuracy and margin distribution, likelihood drift of chosen,
  rejected and unseen responses, top-k indicators along the chosen responses, linear separability
  of chosen vs rejected hidden states, the layer-wise (logit-lens) trace;
* on sampled answers (``settings.samples > 0``): judge reward, win rate against the reference's
  own answers, sequence-level KL(policy || reference), length, distinct-n, top-k indicators.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.prompts import load_prompts  # noqa: F401  (prompt files of `dpokit eval --prompts`)
from ..reference import ModelReference
from .diagnostics import as_model, completion_statistics, has_reference_model, layer_trace, sample_from_ids
from ..preference.judges import build_judge, judge_label, score_responses
from .metrics import distinct_n, margin_distribution, mean_and_stderr, probe_accuracy, win_rate
from .preference import evaluate_pairs

EVAL_KEYS = (
    "preference_accuracy", "reward_margin_mean", "reward_margin_std", "reward_margin_quantiles",
    "reward_margin_histogram", "num_pairs", "logp_drift", "topk_mass_chosen", "topk_entropy_chosen",
    "separability", "separability_reference", "layers",
    "judge", "judge_reward", "judge_reward_reference", "win_rate", "kl", "kl_mc", "kl_mc_stderr",
    "length_mean", "length_mean_reference", "distinct_1", "distinct_2", "distinct_2_reference",
    "topk_mass", "topk_entropy", "topk_mass_reference", "topk_entropy_reference",
)


@dataclass
class EvalSettings:
    beta: float = 0.1
    k: int = 10  # top-k of the over-optimisation indicators
    samples: int = 0  # answers sampled per prompt (0: no generation-based metrics)
    max_prompts: Optional[int] = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    sample_batch_size: int = 32  # prompts per generate call
    chunk_size: int = 256
    diagnostics: bool = True  # drift, top-k on chosen, separability, layer trace
    layer_positions: int = 512  # positions used by the layer trace
    probe_folds: int = 5


def _per_token(total: torch.Tensor, lengths: torch.Tensor) -> float:
    return float(total.sum() / lengths.sum().clamp_min(1))


def _mean(t: torch.Tensor) -> Optional[float]:
    return float(t.double().mean()) if t.numel() else None


@torch.no_grad()
def pair_diagnostics(policy, reference, examples: Sequence, pad_token_id: int, settings: EvalSettings) -> Dict[str, Any]:
    """Likelihood drift, top-k indicators on the chosen responses, separability, layer trace."""
    examples = list(examples)
    n = len(examples)
    with_unseen = n > 1
    # unseen response for pair i: the chosen response of pair i-1 (a response to another prompt)
    groups = [(ex.prompt_ids, [ex.completions[0], ex.completions[1]]
               + ([examples[i - 1].completions[0]] if with_unseen else [])) for i, ex in enumerate(examples)]
    width = 3 if with_unseen else 2
    ref = reference if has_reference_model(reference) else None
    stats = completion_statistics(policy, groups, pad_token_id, ref, settings.k, settings.batch_size,
                                  settings.chunk_size, pool=True)
    rows = {"chosen": slice(0, None, width), "rejected": slice(1, None, width)}
    if with_unseen:
        rows["unseen"] = slice(2, None, width)
    out: Dict[str, Any] = {}
    lengths = stats["lengths"]
    chosen = rows["chosen"]
    out["topk_mass_chosen"] = _per_token(stats["topk_mass"][chosen], lengths[chosen])
    out["topk_entropy_chosen"] = _per_token(stats["topk_entropy"][chosen], lengths[chosen])
    if ref is not None:
        drift: Dict[str, Any] = {}
        for name, index in rows.items():
            delta = stats["logps"][index] - stats["ref_logps"][index]
            drift[name] = _mean(delta)
            drift[f"{name}_per_token"] = _per_token(delta, lengths[index])
        out["logp_drift"] = drift
        out["topk_mass_chosen_reference"] = _per_token(stats["ref_topk_mass"][chosen], lengths[chosen])
        out["topk_entropy_chosen_reference"] = _per_token(stats["ref_topk_entropy"][chosen], lengths[chosen])
    out["logps_unseen_mean"] = _mean(stats["logps"][rows["unseen"]]) if with_unseen else None
    labels = torch.cat([torch.ones(n), torch.zeros(n)])
    pair_index = torch.cat([torch.arange(n), torch.arange(n)])
    features = torch.cat([stats["pooled"][rows["chosen"]], stats["pooled"][rows["rejected"]]])
    out["separability"] = probe_accuracy(features, labels, pair_index, settings.probe_folds, seed=settings.seed)
    if "ref_pooled" in stats:
        ref_features = torch.cat([stats["ref_pooled"][rows["chosen"]], stats["ref_pooled"][rows["rejected"]]])
        out["separability_reference"] = probe_accuracy(ref_features, labels, pair_index, settings.probe_folds,
                                                       seed=settings.seed)
    sequences = [ex.prompt_ids + ex.completions[0] for ex in examples]
    trace = {"policy": layer_trace(policy, sequences, pad_token_id, settings.layer_positions, settings.chunk_size)}
    if ref is not None:
        with as_model(ref) as ref_model:
            trace["reference"] = layer_trace(ref_model, sequences, pad_token_id, settings.layer_positions,
                                             settings.chunk_size)
    layers: Dict[str, Any] = {"positions": trace["policy"]["positions"]}
    for name in ("contraction", "transport"):
        layers[name] = {side: t[name] for side, t in trace.items()}
        if "reference" in trace:
            layers[name]["delta"] = [a - b for a, b in zip(trace["policy"][name], trace["reference"][name])]
    out["layers"] = layers
    return out


def prompts_from_examples(examples: Sequence, tokenizer) -> List[Tuple[List[int], str]]:
    """Distinct prompts of tokenized examples (first occurrence order) with their decoded text."""
    seen, prompts = set(), []
    for ex in examples:
        key = tuple(ex.prompt_ids)
        if key not in seen:
            seen.add(key)
            prompts.append((list(ex.prompt_ids), tokenizer.decode(ex.prompt_ids, skip_special_tokens=True)))
    return prompts


def prompts_from_texts(texts: Sequence, tokenizer) -> List[Tuple[List[int], str]]:
    """Text prompts (or chat message lists, rendered with the chat template) -> (ids, text)."""
    out = []
    for item in texts:
        if isinstance(item, list):
            text = tokenizer.apply_chat_template(item, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = str(item)
            ids = tokenizer(text)["input_ids"]
        out.append((ids, text))
    return out


def _group_scores(judge, texts: Sequence[str], groups) -> List[List[float]]:
    flat = score_responses(judge, [t for t, group in zip(texts, groups) for _ in group],
                     [s.text for group in groups for s in group])
    out, start = [], 0
    for group in groups:
        out.append(flat[start:start + len(group)])
        start += len(group)
    return out


@torch.no_grad()
def generation_metrics(policy, reference, tokenizer, prompts: Sequence[Tuple[List[int], str]], judge,
                       settings: EvalSettings) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = [p for p, _ in prompts]
    texts = [t for _, t in prompts]
    sampling = dict(n=settings.samples, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                    top_p=settings.top_p, batch_size=max(1, settings.sample_batch_size), seed=settings.seed)
    ours = sample_from_ids(policy, tokenizer, prompt_ids, **sampling)
    ref = reference if has_reference_model(reference) else None
    theirs = None
    if ref is not None:
        with as_model(ref) as ref_model:
            theirs = sample_from_ids(ref_model, tokenizer, prompt_ids, **sampling)
    out: Dict[str, Any] = {"num_prompts": len(prompts), "samples_per_prompt": settings.samples}
    groups = [(p, [s.completion(eos) for s in group]) for p, group in zip(prompt_ids, ours)]
    stats = completion_statistics(policy, groups, pad, ref, settings.k, settings.batch_size, settings.chunk_size)
    answers = [s.text for group in ours for s in group]
    out["length_mean"] = sum(len(s.ids) for group in ours for s in group) / max(len(answers), 1)
    out["distinct_1"] = distinct_n(answers, 1)
    out["distinct_2"] = distinct_n(answers, 2)
    out["topk_mass"] = _per_token(stats["topk_mass"], stats["lengths"])
    out["topk_entropy"] = _per_token(stats["topk_entropy"], stats["lengths"])
    out["eos_rate"] = sum(s.ended for group in ours for s in group) / max(len(answers), 1)
    rows = [{"prompt": t, "policy": [s.text for s in group]} for t, group in zip(texts, ours)]
    scores = None
    if judge is not None:
        scores = _group_scores(judge, texts, ours)
        out["judge_reward"] = sum(map(sum, scores)) / max(len(answers), 1)
        for row, row_scores in zip(rows, scores):
            row["policy_scores"] = row_scores
    if ref is not None:
        out["kl"] = _mean(stats["kl"])
        out["kl_mc"], out["kl_mc_stderr"] = mean_and_stderr((stats["logps"] - stats["ref_logps"]).tolist())
        ref_groups = [(p, [s.completion(eos) for s in group]) for p, group in zip(prompt_ids, theirs)]
        ref_stats = completion_statistics(policy, ref_groups, pad, ref, settings.k, settings.batch_size,
                                          settings.chunk_size)
        ref_answers = [s.text for group in theirs for s in group]
        out["reference_samples_drift"] = _mean(ref_stats["logps"] - ref_stats["ref_logps"])
        out["length_mean_reference"] = sum(len(s.ids) for group in theirs for s in group) / max(len(ref_answers), 1)
        out["distinct_2_reference"] = distinct_n(ref_answers, 2)
        out["topk_mass_reference"] = _per_token(ref_stats["ref_topk_mass"], ref_stats["lengths"])
        out["topk_entropy_reference"] = _per_token(ref_stats["ref_topk_entropy"], ref_stats["lengths"])
        for row, group in zip(rows, theirs):
            row["reference"] = [s.text for s in group]
        if judge is not None:
            ref_scores = _group_scores(judge, texts, theirs)
            out["judge_reward_reference"] = sum(map(sum, ref_scores)) / max(len(ref_answers), 1)
            out["win_rate"] = win_rate(scores, ref_scores)
            for row, row_scores in zip(rows, ref_scores):
                row["reference_scores"] = row_scores
    return out, rows


def evaluate_checkpoint(policy, reference, tokenizer, pairs: Sequence = (), prompts=None, judge=None, loss_fn=None,
                        settings: EvalSettings = EvalSettings(), family=None) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Evaluate ``policy`` against ``reference`` (a model, a :mod:`dpokit.reference` object, or None).

    ``pairs``: tokenized held-out pairs (``TokenizedExample``); ``prompts``: ``(ids, text)`` tuples for
    generation (default: the distinct prompts of ``pairs``); ``judge``: a callable or a spec for
    :func:`~dpokit.preference.judges.build_judge`. ``family``: the model family
    (:mod:`dpokit.families`; default: a causal LM) gives the engine and batches the pairs are scored
    with, and whether the text-only diagnostics and generation apply (a vision-language model: no,
    they are skipped with a note). ``tokenizer``: a tokenizer or a processor. Returns ``(result, sample_rows)``."""
    started = time.time()
    processor, tokenizer = tokenizer, getattr(tokenizer, "tokenizer", tokenizer)
    pad = tokenizer.pad_token_id
    scoring = {} if family is None else {"engine_class": family.eval_engine(), "batch_fn": family.batch}
    text_only = family is None or family.text_diagnostics
    result: Dict[str, Any] = {key: None for key in EVAL_KEYS}
    notes: List[str] = []
    if judge is not None:
        judge = build_judge(judge)
        result["judge"] = judge_label(judge)
    if reference is not None and not isinstance(reference, torch.nn.Module) and not hasattr(reference, "token_logprobs"):
        raise TypeError("reference: expected a model or a dpokit reference object")
    ref_object = reference
    if isinstance(reference, torch.nn.Module):
        ref_object = ModelReference(reference)
    policy.eval()
    pairs = list(pairs)
    if pairs:
        preference = evaluate_pairs(policy, ref_object, pairs, pad, loss_fn, settings.beta, settings.batch_size,
                                    return_margins=True, **scoring)
        margins = preference.pop("margins")
        result.update(preference)
        distribution = margin_distribution(margins)
        result["reward_margin_quantiles"] = distribution["quantiles"]
        result["reward_margin_histogram"] = distribution["histogram"]
        if settings.diagnostics and text_only:
            result.update(pair_diagnostics(policy, ref_object, pairs, pad, settings))
        elif settings.diagnostics:
            notes.append("[partial] drift, top-k, separability and layer trace read token ids only: skipped for "
                         f"{type(processor).__name__} inputs (images)")
    else:
        notes.append("no held-out pairs: preference metrics, drift and separability skipped")
    rows: List[Dict[str, Any]] = []
    if settings.samples > 0 and not text_only:
        notes.append("[partial] generation samples text prompts only: skipped for a vision-language model")
    elif settings.samples > 0:
        if prompts is None:
            prompts = prompts_from_examples(pairs, tokenizer)
        if settings.max_prompts is not None:
            prompts = prompts[:settings.max_prompts]
        if prompts:
            generated, rows = generation_metrics(policy, ref_object, tokenizer, prompts, judge, settings)
            drift_on_reference = generated.pop("reference_samples_drift", None)
            result.update(generated)
            if drift_on_reference is not None:
                result["logp_drift"] = dict(result.get("logp_drift") or {}, reference_samples=drift_on_reference)
            if settings.temperature != 1.0 or settings.top_p != 1.0:
                notes.append("answers were sampled with temperature/top-p other than 1: kl estimates the KL of the "
                             "sampling distribution's support weighting, not exactly KL(policy || reference)")
        else:
            notes.append("no prompts to sample from")
    else:
        notes.append("no generation (--generate 0): judge reward, win rate, KL, length, diversity skipped")
    if reference is None:
        notes.append("no reference: drift, KL and win rate skipped; implicit rewards are reference-free")
    result["beta"] = settings.beta
    result["topk_k"] = settings.k
    result["sampling"] = {k: v for k, v in asdict(settings).items()
                          if k in ("samples", "max_new_tokens", "temperature", "top_p", "seed")}
    result["notes"] = notes
    result["seconds"] = round(time.time() - started, 2)
    return result, rows


# ---- output -----------------------------------------------------------------------------------------

def write_eval(result: Dict[str, Any], rows: Sequence[Dict[str, Any]], output: str) -> str:
    """Write ``eval.json`` (and ``samples.jsonl`` when there are samples). ``output`` is a directory
    (``DIR/eval.json``, ``DIR/samples.jsonl``) or a ``.json`` path (samples in ``<stem>.samples.jsonl``).
    Returns the path of the JSON file."""
    if output.endswith(".json"):
        json_path = output
        samples_path = output[:-len(".json")] + ".samples.jsonl"
    else:
        json_path = os.path.join(output, "eval.json")
        samples_path = os.path.join(output, "samples.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    result = dict(result)
    if rows:
        with open(samples_path, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        result["samples_file"] = os.path.basename(samples_path)
    with open(json_path, "w") as handle:
        json.dump(json_safe(result), handle, indent=2)
    return json_path


def json_safe(value):
    """``value`` with non-finite floats as None (JSON has no NaN), through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


TABLE_ROWS = (
    ("preference accuracy", "preference_accuracy", None),
    ("reward margin mean", "reward_margin_mean", None),
    ("reward margin median", ("reward_margin_quantiles", "q50"), None),
    ("loss", "loss", None),
    ("judge reward", "judge_reward", "judge_reward_reference"),
    ("win rate vs reference", "win_rate", None),
    ("KL(policy || reference)", "kl", None),
    ("KL, Monte Carlo", "kl_mc", None),
    ("response length (tokens)", "length_mean", "length_mean_reference"),
    ("distinct-2", "distinct_2", "distinct_2_reference"),
    ("top-k mass (samples)", "topk_mass", "topk_mass_reference"),
    ("top-k entropy, bits (samples)", "topk_entropy", "topk_entropy_reference"),
    ("top-k mass (chosen)", "topk_mass_chosen", "topk_mass_chosen_reference"),
    ("top-k entropy, bits (chosen)", "topk_entropy_chosen", "topk_entropy_chosen_reference"),
    ("log-lik. drift: chosen", ("logp_drift", "chosen"), None),
    ("log-lik. drift: rejected", ("logp_drift", "rejected"), None),
    ("log-lik. drift: unseen", ("logp_drift", "unseen"), None),
    ("log-lik. drift: ref. samples", ("logp_drift", "reference_samples"), None),
    ("separability (probe acc.)", "separability", "separability_reference"),
)


def lookup(result: Dict[str, Any], key) -> Any:
    if isinstance(key, tuple):
        value = result
        for part in key:
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return result.get(key)


def format_eval_table(result: Dict[str, Any]) -> str:
    lines = [f"{'metric':<32}{'policy':>12}{'reference':>12}", "-" * 56]
    for label, key, ref_key in TABLE_ROWS:
        value = lookup(result, key)
        if value is None:
            continue
        ref_value = lookup(result, ref_key) if ref_key else None
        ref_text = f"{ref_value:>12.4f}" if isinstance(ref_value, (int, float)) else f"{'':>12}"
        lines.append(f"{label:<32}{value:>12.4f}{ref_text}")
    layers = result.get("layers") or {}
    if layers.get("contraction"):
        lines.append("")
        lines.append("layer  contraction (policy / ref)   transport to next (policy / ref)")
        contraction, transport = layers["contraction"], layers.get("transport", {})
        for i, value in enumerate(contraction["policy"]):
            ref_c = contraction.get("reference", [None] * (i + 1))[i]
            t_pol = transport.get("policy", [])[i] if i < len(transport.get("policy", [])) else None
            t_ref = transport.get("reference", [])[i] if i < len(transport.get("reference", [])) else None
            lines.append(f"{i:>5}  {_fmt(value)} / {_fmt(ref_c)}        {_fmt(t_pol)} / {_fmt(t_ref)}")
    for note in result.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:8.4f}" if isinstance(value, (int, float)) and value == value else f"{'-':>8}"


def evaluate_into_run(policy, reference, tokenizer, pairs: Sequence, output: str, judge=None, samples: int = 2,
                      max_new_tokens: int = 64, seed: int = 0, beta: float = 0.1,
                      meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Evaluate on ``pairs`` (and on answers sampled for their prompts) and write ``eval.json`` and
    ``samples.jsonl`` into ``output`` (what ``dpokit report`` reads); ``meta`` is added to the JSON."""
    settings = EvalSettings(beta=beta, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    result, rows = evaluate_checkpoint(policy, reference, tokenizer, pairs, None, judge, None, settings)
    result.update(meta or {})
    write_eval(result, rows, output)
    return result
