"""``dpokit report SWEEP_DIR``: the HTML page of a ``dpokit sweep`` directory (one with ``sweep.json``).

Sections:

* summary: one row per group (every key but the seed key), ``mean ± half-width of the 95% t-interval``
  per metric, with n; and the failed runs with their errors;
* metric per method: one panel per metric, a bar per group with its 95% interval and the seeds as dots;
* reward vs KL: per group the mean (with intervals on both axes) and each seed's final point, plus
  the starting point (``reward_before`` at KL 0) when the runs report it;
* training curves overlaid: every run's ``metrics.jsonl`` curves, coloured by group.

Like :mod:`dpokit.eval.report`, the page is self-contained (PNG plots as ``data:`` URIs, also written
next to ``index.html``).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any, Dict, List, Optional

from ..paths import safe_join
from .report import STYLE, _e, _grid, _img, _matplotlib, _save
from .runs import Run, load_run
from .stats import format_interval

SWEEP_FILE = "sweep.json"
SWEEP_CURVES = (("loss", "training loss"), ("rewards/accuracies", "implicit-reward accuracy"),
                ("rewards/margins", "reward margin"), ("monitor/judge_reward", "judge reward (monitor)"),
                ("monitor/kl", "KL to reference (monitor)"), ("eval/rewards/accuracies", "eval accuracy"))
PREFERRED = ("reward", "reward_gain", "kl", "length", "preference_accuracy", "reward_margin_mean")


def is_sweep_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SWEEP_FILE))


def load_sweep(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, SWEEP_FILE)) as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{os.path.join(path, SWEEP_FILE)}: not a sweep file (no 'rows' list)")
    return data


def shown_metrics(sweep: Dict[str, Any], limit: int = 6) -> List[str]:
    metrics = list(sweep.get("metrics") or [])
    preferred = [m for m in PREFERRED if m in metrics]
    return (preferred or metrics)[:limit]


def _stat(group: Dict[str, Any], metric: str) -> Dict[str, Any]:
    return (group.get("metrics") or {}).get(metric) or {}


def plot_metrics(plt, sweep: Dict[str, Any], directory: str):
    groups, metrics = sweep.get("summary") or [], shown_metrics(sweep)
    if not groups or not metrics:
        return None
    fig, axes = _grid(plt, len(metrics), columns=3, size=(max(4.2, 0.9 * len(groups) + 1.5), 3.4))
    for ax, metric in zip(axes, metrics):
        for i, group in enumerate(groups):
            s = _stat(group, metric)
            if s.get("mean") is None:
                continue
            err = s["half_width"] if s.get("half_width") is not None else 0.0
            ax.bar(i, s["mean"], yerr=err, color=f"C{i % 10}", alpha=0.7, capsize=4)
            ax.scatter([i] * len(s.get("values") or []), s.get("values") or [], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g["group"] for g in groups], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=8)
    fig.suptitle("final metrics per group (bar: mean, whisker: 95% t-interval, dots: seeds)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, plt, directory, "sweep_metrics.png")


def plot_sweep_frontier(plt, sweep: Dict[str, Any], directory: str):
    groups = [g for g in sweep.get("summary") or [] if _stat(g, "kl").get("mean") is not None
              and _stat(g, "reward").get("mean") is not None]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for i, group in enumerate(groups):
        color = f"C{i % 10}"
        kl, reward = _stat(group, "kl"), _stat(group, "reward")
        ax.errorbar(kl["mean"], reward["mean"], xerr=kl.get("half_width") or 0, yerr=reward.get("half_width") or 0,
                    fmt="*", markersize=12, color=color, capsize=3, label=group["group"])
        ax.scatter(kl.get("values") or [], reward.get("values") or [], color=color, s=14, alpha=0.5)
        before = _stat(group, "reward_before")
        if before.get("mean") is not None:
            ax.scatter([0.0], [before["mean"]], marker="D", color=color, s=25, alpha=0.7)
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("task reward")
    ax.set_title("reward vs KL per group (star: mean ± 95% CI; dots: seeds; diamond: start)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, directory, "sweep_frontier.png")


def plot_sweep_curves(plt, sweep_dir: str, sweep: Dict[str, Any], directory: str):
    group_of: Dict[str, int] = {}
    for i, group in enumerate(sweep.get("summary") or []):
        for name in group.get("runs") or []:
            group_of[name] = i
    runs: List[Run] = []
    for row in sweep["rows"]:
        path = os.path.join(sweep_dir, row.get("dir") or os.path.join("runs", row["run"]))
        if row.get("status") == "done" and os.path.isdir(path):
            runs.append(load_run(path, row["run"]))
    present = [(k, label) for k, label in SWEEP_CURVES if any(run.series(k)[0] for run in runs)]
    if not present:
        return None
    fig, axes = _grid(plt, len(present))
    labelled = set()
    groups = sweep.get("summary") or []
    for ax, (key, label) in zip(axes, present):
        for run in runs:
            steps, values = run.series(key)
            index = group_of.get(run.name, 0)
            name = groups[index]["group"] if index < len(groups) else run.name
            ax.plot(steps, values, color=f"C{index % 10}", alpha=0.6, lw=1, marker="o" if len(steps) < 5 else None,
                    label=name if (ax is axes[0] and index not in labelled) else None)
            if ax is axes[0]:
                labelled.add(index)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle("training curves, every run, coloured by group")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, plt, directory, "sweep_curves.png")


def summary_table(sweep: Dict[str, Any]) -> str:
    metrics = list(sweep.get("metrics") or [])
    metrics = shown_metrics(sweep, limit=len(metrics)) + [m for m in metrics if m not in PREFERRED]
    head = "<th class=text>group</th><th>n</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    lines = []
    for group in sweep.get("summary") or []:
        n = max((s.get("n", 0) for s in (group.get("metrics") or {}).values()), default=0)
        cells = "".join(f"<td>{html.escape(format_interval(_stat(group, m)))}</td>" for m in metrics)
        lines.append(f"<tr><td class=text>{html.escape(group['group'])}</td><td>{n}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def failures(sweep: Dict[str, Any]) -> str:
    failed = [r for r in sweep["rows"] if r.get("status") != "done"]
    if not failed:
        return ""
    items = "".join(f"<li class=warning>{html.escape(r['run'])}: {html.escape(str(r.get('error')))}</li>" for r in failed)
    return f"<h2>Failed runs</h2><ul>{items}</ul>"


def build_sweep_report(sweep_dir: str, output: str, title: Optional[str] = None) -> str:
    """Write ``output/index.html`` for the sweep in ``sweep_dir``; returns its path."""
    sweep = load_sweep(sweep_dir)
    os.makedirs(output, exist_ok=True)
    plt = _matplotlib()
    title = title or f"dpokit sweep: {sweep.get('base')} over {', '.join(sweep.get('grid') or {})}"
    grid = "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in (sweep.get("grid") or {}).items())
    done = sum(r.get("status") == "done" for r in sweep["rows"])
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=note>{html.escape(os.path.abspath(sweep_dir))} | grid: {html.escape(grid)} | seed key: "
             f"{_e(sweep.get('seed_key'))} | {done}/{len(sweep['rows'])} runs finished</p>",
             "<h2>Summary</h2><p class=note>mean ± half-width of the 95% Student-t interval over the seed key</p>",
             summary_table(sweep), failures(sweep)]
    if plt is None:
        parts.append("<p class=note>matplotlib is not installed: plots are omitted.</p>")
    else:
        metrics = plot_metrics(plt, sweep, output)
        frontier = plot_sweep_frontier(plt, sweep, output)
        curves = plot_sweep_curves(plt, sweep_dir, sweep, output)
        if metrics:
            parts += ["<h2>Metric per group</h2>", _img(metrics, "final metrics per group")]
        if frontier:
            parts += ["<h2>Reward vs KL</h2>", _img(frontier, "reward versus KL per group")]
        if curves:
            parts += ["<h2>Training curves</h2>", _img(curves, "training curves overlaid")]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    path = safe_join(output, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path
