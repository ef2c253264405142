"""``dpokit audit DATA``: what a preference data set lets a model learn besides the preference.

Multi-model preference data can be told apart by superficial cues (style, length, format): a model
trained with DPO on it can drive its loss down by learning those cues instead of the intended
preference (Wang et al. 2025, "More is Less", arXiv 2504.02193, who report high linear separability
of chosen and rejected responses in such data). The audit measures, on one pairs file:

* **separability**: held-out accuracy of a logistic probe telling a chosen response from a rejected
  one, on length features alone, on surface features (hashed word n-grams, length, style markers)
  and, with ``--model``, on a local model's mean-pooled last hidden states over the response;
  cross-validated with every prompt's pairs in one fold (:func:`audit_features.separability_probe`);
* **length**: the share of pairs whose chosen response is longer (Wilson interval), and the accuracy
  of the rule "the longer one is chosen";
* **sources**: per-source pair counts and cues when a ``source``-like column exists; per-model win
  rates with ``chosen_model``/``rejected_model`` columns (the share of pairs mixing two models);
* **duplicates**: exact duplicate pairs, pairs sharing a prompt, contradicting pairs (the same two
  responses in the opposite order) and near-duplicate pairs (MinHash on word 3-shingles, Jaccard >= 0.8);
* **label noise** (an estimate, see :func:`label_noise`): the share of pairs that a cross-validated
  linear scorer, or a reward model given with ``--reward-model``, confidently orders against the label.

A WARNING line is printed when length alone or a surface probe separates the pairs above
``--threshold`` (0.7; a threshold of our choosing, not the paper's), or the model probe above
``--model-threshold`` (0.9). Bad records stop the audit with a :class:`~dpokit.errors.DataError`
naming the file, line and field.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import DataError
from . import audit_features as F

SOURCE_COLUMNS = ("source", "dataset", "data_source", "subset", "category", "domain", "model")
MODEL_COLUMNS = ("chosen_model", "rejected_model")


@dataclass
class AuditSettings:
    threshold: float = 0.7  # a superficial cue above this accuracy gets a WARNING
    model_threshold: float = 0.9  # the model-feature probe above this gets a WARNING
    confidence: float = 0.9  # a scorer "confidently disagrees" when P(chosen preferred) < 1 - confidence
    near_threshold: float = 0.8  # Jaccard similarity of near-duplicates
    folds: int = 5
    seed: int = 0
    hash_dim: int = 2048
    batch_size: int = 8
    max_length: int = 512


@dataclass
class AuditPair:
    prompt: str
    chosen: str
    rejected: str
    location: str
    source: Optional[str] = None
    chosen_model: Optional[str] = None
    rejected_model: Optional[str] = None


# ---- reading -------------------------------------------------------------------------------------------

def _text_column(location: str, record: Dict[str, Any], name: str) -> Optional[str]:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(location, name, f"expected a text label, got {type(value).__name__}")


def read_audit_pairs(source: Any, limit: Optional[int] = None) -> Tuple[List[AuditPair], List[Dict[str, str]]]:
    """The pairs of ``source`` (any format ``dpokit train`` reads; implicit prompts are split off as
    there) and the records skipped for unusable content (``{location, problem}``: chosen identical to
    rejected, an empty completion). Structural errors raise :class:`DataError`."""
    from ..data.formats import iter_records, parse_pair

    pairs, skipped = [], []
    for location, record in iter_records(source):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pair = parse_pair(location, record)
        except DataError as err:
            if not err.content:
                raise
            skipped.append({"location": location, "problem": str(err)})
            continue
        pairs.append(AuditPair(F.as_text(pair.prompt), F.as_text(pair.chosen), F.as_text(pair.rejected), location,
                               next((_text_column(location, record, c) for c in SOURCE_COLUMNS
                                     if record.get(c) is not None), None),
                               _text_column(location, record, "chosen_model"),
                               _text_column(location, record, "rejected_model")))
    if not pairs:
        raise DataError(str(source), None, "holds no usable preference pair" +
                        (f" ({len(skipped)} skipped: {skipped[0]['problem']})" if skipped else ""))
    return pairs, skipped


def prompt_groups(pairs: Sequence[AuditPair]) -> List[int]:
    """One id per distinct prompt (whitespace- and case-normalised): the probes' cross-validation unit."""
    ids: Dict[str, int] = {}
    return [ids.setdefault(F.normalise(p.prompt), len(ids)) for p in pairs]


# ---- sections ------------------------------------------------------------------------------------------

def length_section(pairs: Sequence[AuditPair]) -> Dict[str, Any]:
    """Words (whitespace-separated) of each response; the share of pairs with the chosen one longer."""
    n = len(pairs)
    w = [len(p.chosen.split()) for p in pairs]
    l = [len(p.rejected.split()) for p in pairs]
    longer = sum(a > b for a, b in zip(w, l))
    shorter = sum(a < b for a, b in zip(w, l))
    ties = n - longer - shorter
    rule = (max(longer, shorter) + 0.5 * ties) / n
    return {"num_pairs": n, "chosen_longer": longer / n, "chosen_longer_ci95": F.wilson(longer, n),
            "chosen_shorter": shorter / n, "ties": ties / n,
            "length_rule_accuracy": rule, "length_rule": "longer" if longer >= shorter else "shorter",
            "words_chosen_mean": sum(w) / n, "words_rejected_mean": sum(l) / n,
            "chars_chosen_mean": sum(len(p.chosen) for p in pairs) / n,
            "chars_rejected_mean": sum(len(p.rejected) for p in pairs) / n}


def source_section(pairs: Sequence[AuditPair], ranked_right: Sequence[float]) -> Dict[str, Any]:
    """Per source column value: pairs, share chosen longer, held-out surface ranking accuracy; per
    model (``chosen_model``/``rejected_model``): appearances, wins and win rate (Wilson interval)."""
    out: Dict[str, Any] = {}
    by_source: Dict[str, List[int]] = {}
    for i, p in enumerate(pairs):
        if p.source is not None:
            by_source.setdefault(p.source, []).append(i)
    if by_source:
        out["sources"] = {
            name: {"num_pairs": len(idx),
                   "chosen_longer": sum(len(pairs[i].chosen.split()) > len(pairs[i].rejected.split())
                                        for i in idx) / len(idx),
                   "surface_ranking_accuracy": (sum(ranked_right[i] for i in idx) / len(idx)) if ranked_right else None}
            for name, idx in sorted(by_source.items())}
    with_models = [p for p in pairs if p.chosen_model is not None and p.rejected_model is not None]
    if with_models:
        stats: Dict[str, List[int]] = {}
        for p in with_models:
            if p.chosen_model == p.rejected_model:
                continue
            stats.setdefault(p.chosen_model, [0, 0])[0] += 1
            stats[p.chosen_model][1] += 1
            stats.setdefault(p.rejected_model, [0, 0])[1] += 1
        out["models"] = {name: {"wins": wins, "appearances": seen, "win_rate": wins / seen,
                                "win_rate_ci95": F.wilson(wins, seen)} for name, (wins, seen) in sorted(stats.items())}
        out["mixed_model_share"] = sum(p.chosen_model != p.rejected_model for p in with_models) / len(with_models)
        out["pairs_with_models"] = len(with_models)
    return out


def duplicate_section(pairs: Sequence[AuditPair], threshold: float = 0.8, seed: int = 0) -> Dict[str, Any]:
    """Exact duplicates (normalised prompt, chosen and rejected), shared prompts, contradictions (the
    same prompt and responses with chosen and rejected swapped) and near-duplicate pairs."""
    n = len(pairs)
    keys: Dict[Tuple[str, str, str], List[int]] = {}
    prompts: Dict[str, int] = {}
    for i, p in enumerate(pairs):
        key = (F.normalise(p.prompt), F.normalise(p.chosen), F.normalise(p.rejected))
        keys.setdefault(key, []).append(i)
        prompts[key[0]] = prompts.get(key[0], 0) + 1
    exact_groups = [g for g in keys.values() if len(g) > 1]
    contradicting = sorted({i for (x, a, b), g in keys.items() if (x, b, a) in keys for i in g})
    near, similar = F.near_duplicate_groups([f"{p.prompt}\n{p.chosen}\n{p.rejected}" for p in pairs], threshold,
                                            seed=seed)
    near_prompts, _ = F.near_duplicate_groups([p.prompt for p in pairs], threshold, seed=seed)
    return {
        "exact_duplicate_pairs": sum(len(g) for g in exact_groups),  # pairs in a group of identical pairs
        "exact_duplicate_extra_copies": sum(len(g) - 1 for g in exact_groups),
        "shared_prompt_pairs": sum(c for c in prompts.values() if c > 1),
        "distinct_prompts": len(prompts),
        "contradicting_pairs": len(contradicting),
        "contradicting_locations": [pairs[i].location for i in contradicting[:10]],
        "near_duplicate_pairs": sum(len(g) for g in near),
        "near_duplicate_groups": len(near),
        "near_duplicate_similar_index_pairs": similar,
        "near_duplicate_examples": [[pairs[i].location for i in g[:3]] for g in near[:5]],
        "near_duplicate_prompt_pairs": sum(len(g) for g in near_prompts),
        "near_threshold": threshold,
        "share_affected": (sum(len(g) for g in near) / n) if n else 0.0,
    }


def label_noise(p_chosen: Sequence[float], pairs: Sequence[AuditPair], confidence: float, scorer: str) -> Dict[str, Any]:
    """The share of pairs a scorer confidently orders against their label: ``P(chosen preferred) <
    1 - confidence`` under the scorer's Bradley-Terry probability.

    This is an estimate with a known bias in both directions, not a measurement of the flip rate: a
    mislabelled pair the scorer cannot judge (the preference turns on content the features do not
    carry) is missed, and a correctly labelled pair the scorer gets confidently wrong is counted.
    For the cross-validated probe the scorer never saw the pair it judges, but it learned from the same
    noisy labels; a reward model is only as good as its own data. Read it as "pairs worth inspecting",
    the locations of the most confident disagreements are listed for that."""
    n = len(p_chosen)
    if not n:
        return {"scorer": scorer, "confident_disagreement": None}
    flagged = [i for i, p in enumerate(p_chosen) if p < 1 - confidence]
    worst = sorted(flagged, key=lambda i: p_chosen[i])[:10]
    return {"scorer": scorer, "confidence": confidence, "confident_disagreement": len(flagged) / n,
            "confident_disagreement_ci95": F.wilson(len(flagged), n),
            "disagreement": sum(p < 0.5 for p in p_chosen) / n,
            "most_confident_disagreements": [{"location": pairs[i].location, "p_chosen": round(p_chosen[i], 4)}
                                             for i in worst]}


# ---- the audit -----------------------------------------------------------------------------------------

def audit_pairs(pairs: Sequence[AuditPair], settings: AuditSettings = AuditSettings(), model=None, tokenizer=None,
                reward_judge=None, skipped: Sequence[Dict[str, str]] = ()) -> Dict[str, Any]:
    """Every section of the audit as one JSON-ready dict (see the module docstring)."""
    groups = prompt_groups(pairs)
    chosen_texts, rejected_texts = [p.chosen for p in pairs], [p.rejected for p in pairs]
    probes: Dict[str, Any] = {}
    probes["length"] = F.separability_probe(F.length_only(chosen_texts), F.length_only(rejected_texts), groups,
                                            settings.folds, settings.seed)
    surface_w = F.surface_features(chosen_texts, settings.hash_dim)
    surface_l = F.surface_features(rejected_texts, settings.hash_dim)
    probes["surface"] = F.separability_probe(surface_w, surface_l, groups, settings.folds, settings.seed)
    ranking = {"surface": F.ranking_probe(surface_w, surface_l, groups, settings.folds, settings.seed)}
    if model is not None:
        prompts = [p.prompt for p in pairs]
        feats_w = F.model_features(model, tokenizer, prompts, chosen_texts, settings.batch_size, settings.max_length)
        feats_l = F.model_features(model, tokenizer, prompts, rejected_texts, settings.batch_size, settings.max_length)
        probes["model"] = F.separability_probe(feats_w, feats_l, groups, settings.folds, settings.seed)
        ranking["model"] = F.ranking_probe(feats_w, feats_l, groups, settings.folds, settings.seed)
    ranked_right = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in ranking["surface"]["p_chosen"]]
    noise = {name: label_noise(r["p_chosen"], pairs, settings.confidence, f"cross-validated {name} ranking probe")
             for name, r in ranking.items()}
    if reward_judge is not None:
        prompts = [p.prompt for p in pairs]
        r_w = reward_judge.score(prompts, chosen_texts)
        r_l = reward_judge.score(prompts, rejected_texts)
        p_rm = torch.sigmoid(torch.tensor(r_w, dtype=torch.float64) - torch.tensor(r_l, dtype=torch.float64)).tolist()
        noise["reward_model"] = label_noise(p_rm, pairs, settings.confidence, "reward model")
        noise["reward_model"]["accuracy"] = sum(p > 0.5 for p in p_rm) / len(p_rm)
    result = {
        "num_pairs": len(pairs), "distinct_prompts": len(set(groups)), "skipped_records": len(skipped),
        "skipped_examples": list(skipped[:5]), "settings": asdict(settings),
        "separability": probes,
        "ranking": {k: {key: v for key, v in r.items() if key != "p_chosen"} for k, r in ranking.items()},
        "length": length_section(pairs),
        "sources": source_section(pairs, ranked_right),
        "duplicates": duplicate_section(pairs, settings.near_threshold, settings.seed),
        "label_noise": noise,
    }
    result["warnings"], result["notes"] = findings(result, settings)
    return result


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Optional[Sequence[float]]) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def findings(result: Dict[str, Any], settings: AuditSettings) -> Tuple[List[str], List[str]]:
    """WARNING texts (a superficial cue above the threshold) and notes (duplicates, contradictions)."""
    warnings, notes = [], []
    length, probes = result["length"], result["separability"]
    cue = max(length["length_rule_accuracy"], probes["length"]["accuracy"] or 0.0)
    if cue > settings.threshold:
        warnings.append(f"length alone separates the pairs: the rule 'the {length['length_rule']} response is chosen' "
                        f"is right on {_pct(length['length_rule_accuracy'])}, a length-only probe on "
                        f"{_pct(probes['length']['accuracy'])} (threshold {_pct(settings.threshold)}); a model can "
                        "lower its DPO loss by changing length alone (consider length-controlled losses or rebalancing)")
    surface = max(probes["surface"]["accuracy"] or 0.0, result["ranking"]["surface"]["accuracy"] or 0.0)
    if surface > settings.threshold:
        warnings.append(f"surface features separate the pairs: a linear probe on hashed n-grams, length and style "
                        f"tells chosen from rejected with held-out accuracy {_pct(probes['surface']['accuracy'])}"
                        f"{_ci(probes['surface']['ci95'])} and ranks {_pct(result['ranking']['surface']['accuracy'])} "
                        f"of the pairs right (threshold {_pct(settings.threshold)}); check that chosen and rejected "
                        "come from the same generator")
    model = probes.get("model")
    if model and model["accuracy"] is not None and model["accuracy"] > settings.model_threshold:
        warnings.append(f"the model's representations separate chosen from rejected responses (probe accuracy "
                        f"{_pct(model['accuracy'])}{_ci(model['ci95'])}, threshold {_pct(settings.model_threshold)}): "
                        "low DPO loss on this data may reflect the cue, not the preference")
    for name, stats in (result["sources"].get("models") or {}).items():
        if stats["appearances"] >= 20 and not 0.2 <= stats["win_rate"] <= 0.8:
            warnings.append(f"model {name!r} wins {_pct(stats['win_rate'])} of its {stats['appearances']} pairs: "
                            "who generated a response predicts the label")
    dup = result["duplicates"]
    if dup["exact_duplicate_extra_copies"]:
        notes.append(f"{dup['exact_duplicate_extra_copies']} extra copies of identical pairs")
    if dup["contradicting_pairs"]:
        notes.append(f"{dup['contradicting_pairs']} pairs contradict another (same responses, swapped labels), "
                     f"e.g. {', '.join(dup['contradicting_locations'][:3])}")
    if dup["near_duplicate_pairs"]:
        notes.append(f"{dup['near_duplicate_pairs']} pairs in {dup['near_duplicate_groups']} near-duplicate groups "
                     f"(Jaccard >= {dup['near_threshold']}); split train/test by group to avoid leakage")
    if result["skipped_records"]:
        notes.append(f"{result['skipped_records']} records skipped for unusable content "
                     f"(first: {result['skipped_examples'][0]['problem']})")
    return warnings, notes


def format_audit(result: Dict[str, Any]) -> str:
    """The terminal table."""
    lines = [f"{result['num_pairs']} pairs, {result['distinct_prompts']} distinct prompts", "",
             f"{'check':<46}{'value':>10}  95% interval", "-" * 72]

    def row(label, value, ci=None):
        lines.append(f"{label:<46}{_pct(value):>10} {_ci(ci)}")

    for name, probe in result["separability"].items():
        row(f"separability probe, {name} features", probe["accuracy"], probe["ci95"])
    for name, probe in result["ranking"].items():
        row(f"linear ranking probe, {name} features", probe["accuracy"], probe["ci95"])
    length = result["length"]
    row("chosen longer than rejected (words)", length["chosen_longer"], length["chosen_longer_ci95"])
    row("ties in length", length["ties"])
    row(f"rule 'the {length['length_rule']} one is chosen'", length["length_rule_accuracy"])
    lines.append(f"{'mean words, chosen / rejected':<46}{length['words_chosen_mean']:>10.1f} / "
                 f"{length['words_rejected_mean']:.1f}")
    dup = result["duplicates"]
    for label, key in (("exact duplicate pairs", "exact_duplicate_pairs"), ("contradicting pairs", "contradicting_pairs"),
                       ("pairs sharing a prompt", "shared_prompt_pairs"),
                       (f"near-duplicate pairs (Jaccard >= {dup['near_threshold']})", "near_duplicate_pairs"),
                       ("near-duplicate prompts", "near_duplicate_prompt_pairs")):
        lines.append(f"{label:<46}{dup[key]:>10}")
    for name, noise in result["label_noise"].items():
        row(f"confident disagreement ({name})", noise["confident_disagreement"], noise.get("confident_disagreement_ci95"))
    sources = result["sources"]
    if sources.get("sources"):
        lines += ["", f"{'source':<30}{'pairs':>8}{'chosen longer':>15}{'surface rank acc.':>19}"]
        for name, s in sources["sources"].items():
            lines.append(f"{name[:29]:<30}{s['num_pairs']:>8}{_pct(s['chosen_longer']):>15}"
                         f"{_pct(s['surface_ranking_accuracy']):>19}")
    if sources.get("models"):
        lines += ["", f"mixed-model pairs: {_pct(sources['mixed_model_share'])}",
                  f"{'model':<30}{'pairs':>8}{'win rate':>10}  95% interval"]
        for name, s in sources["models"].items():
            lines.append(f"{name[:29]:<30}{s['appearances']:>8}{_pct(s['win_rate']):>10} {_ci(s['win_rate_ci95'])}")
    lines.append("")
    lines += [f"WARNING: {w}" for w in result["warnings"]] or ["no superficial cue above the threshold"]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def write_audit(result: Dict[str, Any], output: str, data: str = "") -> List[str]:
    """``audit.json`` and ``audit.md`` (the table, the findings, the most confident disagreements)."""
    os.makedirs(output, exist_ok=True)
    json_path, md_path = os.path.join(output, "audit.json"), os.path.join(output, "audit.md")
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=2)
    lines = [f"# Data audit{': ' + os.path.basename(data) if data else ''}", "", "```", format_audit(result), "```", ""]
    for name, noise in result["label_noise"].items():
        if noise.get("most_confident_disagreements"):
            lines += [f"## Most confident disagreements ({noise['scorer']})", "", "| location | P(chosen preferred) |",
                      "|---|---|"]
            lines += [f"| {d['location']} | {d['p_chosen']:.4f} |" for d in noise["most_confident_disagreements"]]
            lines.append("")
    if result["duplicates"]["near_duplicate_examples"]:
        lines += ["## Near-duplicate groups (first members)", ""]
        lines += [f"* {', '.join(g)}" for g in result["duplicates"]["near_duplicate_examples"]]
        lines.append("")
    lines += ["How to read it: `dpokit audit --help`; the estimators are described in docs/audit.md.", ""]
    with open(md_path, "w") as handle:
        handle.write("\n".join(lines))
    return [json_path, md_path]


# ---- command line --------------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="audit a preference data set: separability, length and source "
                                            "confounds, duplicates, label noise",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("data", metavar="DATA", help="pairs file (.jsonl/.json/.parquet/.csv)")
    p.add_argument("--model", default=None, help="local causal LM whose mean-pooled hidden states feed a probe")
    p.add_argument("--reward-model", default=None, metavar="PATH",
                   help="sequence-classification reward model: its confident disagreements estimate label noise")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("--output", default=None, metavar="DIR", help="write audit.json and audit.md here")
    p.add_argument("--limit", type=int, default=None, help="audit the first N pairs")
    p.add_argument("--threshold", type=float, default=AuditSettings.threshold,
                   help="WARNING when length or surface features separate the pairs above this accuracy")
    p.add_argument("--model-threshold", type=float, default=AuditSettings.model_threshold)
    p.add_argument("--confidence", type=float, default=AuditSettings.confidence,
                   help="label-noise estimate: pairs scored P(chosen preferred) < 1 - this")
    p.add_argument("--near-threshold", type=float, default=AuditSettings.near_threshold)
    p.add_argument("--folds", type=int, default=AuditSettings.folds)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--strict", action="store_true", help="exit with code 1 when there is a WARNING")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    for name, value in (("--threshold", args.threshold), ("--model-threshold", args.model_threshold),
                        ("--confidence", args.confidence), ("--near-threshold", args.near_threshold)):
        if not 0 < value < 1 or (name == "--confidence" and value <= 0.5):
            print(f"dpokit audit: error: {name} must lie in (0, 1){' and above 0.5' if name == '--confidence' else ''}, "
                  f"got {value}", file=sys.stderr)
            return 2
    if args.folds < 2:
        print(f"dpokit audit: error: --folds must be at least 2, got {args.folds}", file=sys.stderr)
        return 2
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"data file not found: {args.data}")
    pairs, skipped = read_audit_pairs(args.data, args.limit)
    settings = AuditSettings(threshold=args.threshold, model_threshold=args.model_threshold,
                             confidence=args.confidence, near_threshold=args.near_threshold, folds=args.folds,
                             seed=args.seed, batch_size=args.batch_size, max_length=args.max_length)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = tokenizer = judge = None
    if args.model:
        from ..config import ModelConfig
        from ..models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(args.model, args.trust_remote_code)
        model = load_causal_lm(args.model, ModelConfig(name_or_path=args.model,
                                                       trust_remote_code=args.trust_remote_code)).eval().to(device)
    if args.reward_model:
        from ..preference.judges import RewardModelJudge

        judge = RewardModelJudge.from_pretrained(args.reward_model, args.trust_remote_code, device=device)
    result = audit_pairs(pairs, settings, model, tokenizer, judge, skipped)
    result.update(data=args.data, model=args.model, reward_model=args.reward_model)
    if args.output:
        for path in write_audit(result, args.output, args.data):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_audit(result))
    return 1 if args.strict and result["warnings"] else 0
