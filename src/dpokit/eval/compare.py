"""``dpokit compare RUN_DIR...``: the final metrics of several runs side by side.

Each value comes from the most specific source present, in this order: the run's ``eval.json``
(``dpokit eval --output``), ``summary.json`` (``after``, written by ``dpokit demo``), the last
monitor line of ``metrics.jsonl`` (``monitor/*``, from ``train.monitor``), the last ``eval/*`` line,
the last training line. ``--json`` also says which source each value came from.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .runs import Run, load_run, unique_names

# column -> candidate sources: ("eval", key) | ("summary", key) | ("metrics", key) | ("config", section.key)
COLUMNS: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = (
    ("loss", (("config", "loss.name"), ("summary", "loss"))),
    ("beta", (("config", "loss.beta"), ("eval", "beta"))),
    ("lr", (("config", "train.lr"),)),
    ("steps", (("metrics", "step"),)),
    ("train_loss", (("metrics", "loss"),)),
    ("eval_loss", (("metrics", "eval/loss"), ("eval", "loss"))),
    ("accuracy", (("eval", "preference_accuracy"), ("summary", "preference_accuracy"),
                  ("metrics", "monitor/accuracy"), ("metrics", "eval/rewards/accuracies"),
                  ("metrics", "rewards/accuracies"))),
    ("margin", (("eval", "reward_margin_mean"), ("summary", "reward_margin_mean"), ("metrics", "monitor/margin"),
                ("metrics", "eval/rewards/margins"), ("metrics", "rewards/margins"))),
    ("reward", (("eval", "judge_reward"), ("summary", "reward"), ("metrics", "monitor/judge_reward"))),
    ("win_rate", (("eval", "win_rate"),)),
    ("kl", (("eval", "kl"), ("summary", "kl"), ("metrics", "monitor/kl"))),
    ("length", (("eval", "length_mean"), ("summary", "length"), ("metrics", "monitor/length"))),
    ("chosen_drift", (("eval", "logp_drift.chosen"), ("metrics", "monitor/drift_chosen"))),
    ("topk_entropy", (("eval", "topk_entropy"), ("metrics", "monitor/topk_entropy"))),
    ("separability", (("eval", "separability"),)),
)


def _get(mapping: Optional[Dict[str, Any]], dotted: str) -> Any:
    value: Any = mapping
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def value_of(run: Run, sources) -> Tuple[Any, Optional[str]]:
    for kind, key in sources:
        if kind == "eval":
            value = _get(run.main_eval, key)
        elif kind == "summary":
            value = _get((run.summary or {}).get("after"), key) if key != "loss" else (run.summary or {}).get("loss")
        elif kind == "config":
            value = _get(run.config, key)
            if key == "loss.name" and value is None:
                value = run.loss_name
        else:
            value = run.last(key)
        if value is not None:
            return value, f"{kind}:{key}"
    return None, None


def compare_rows(paths: Sequence[str]) -> List[Dict[str, Any]]:
    rows = []
    for path, name in zip(paths, unique_names(list(paths))):
        run = load_run(path, name)
        row: Dict[str, Any] = {"run": name}
        sources: Dict[str, str] = {}
        for column, candidates in COLUMNS:
            value, source = value_of(run, candidates)
            row[column] = value
            if source:
                sources[column] = source
        row["sources"] = sources
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_compare(rows: List[Dict[str, Any]]) -> str:
    columns = ["run"] + [c for c, _ in COLUMNS if any(r.get(c) is not None for r in rows)]
    table = [[c for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for k, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
