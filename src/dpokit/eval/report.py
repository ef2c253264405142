"""``dpokit report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page per set of runs.

The page needs no network: plots are PNGs (matplotlib, the ``report`` extra, imported lazily)
embedded as base64 ``data:`` URIs and also written next to ``index.html``; there is no script.
Sections, each shown when its data exists in the run directories:

* runs: the ``dpokit compare`` table;
* training curves from ``metrics.jsonl`` (loss, implicit-reward accuracy and margins, log-probs, eval);
* monitored indicators (``monitor/*`` lines from ``train.monitor``) and the warnings they raised;
* reward-vs-KL frontier: one point per monitored step (``monitor/judge_reward`` vs ``monitor/kl``),
  per evaluated checkpoint (``eval/*.json``), the final evaluation (``eval.json``) and, for
  ``dpokit demo`` runs, before/after from ``summary.json``; one line per run (a beta sweep shows
  as several lines);
* implicit-reward margin histograms and the evaluation table (``eval.json``);
* layer trace (contraction and transport per layer, policy vs reference);
* sample answers of the policy next to the reference's (``samples.jsonl``);
* diffusion runs: image grids, or frame grids (first, middle, last frame) of video samples, of the
  policy next to the reference from the same noise (``samples/diffusion/``, :mod:`.sample_grids`).

Without matplotlib the page has the tables and samples, and says how to get the plots.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..paths import safe_join
from .compare import compare_rows
from .runs import Run, load_run, unique_names
from .sample_grids import grids_section
from .suite import TABLE_ROWS, lookup

CURVES = (
    ("loss", "training loss"), ("eval/loss", "eval loss"),
    ("rewards/accuracies", "implicit-reward accuracy"), ("eval/rewards/accuracies", "eval accuracy"),
    ("rewards/margins", "reward margin"), ("eval/rewards/margins", "eval reward margin"),
    ("logps/chosen", "log p(chosen)"), ("logps/rejected", "log p(rejected)"),
    ("rewards/chosen", "reward (chosen)"), ("rewards/rejected", "reward (rejected)"),
    ("grad_norm", "gradient norm"), ("lr", "learning rate"),
)
MONITOR_CURVES = (
    ("monitor/drift_chosen", "log-lik. drift: chosen"), ("monitor/drift_rejected", "log-lik. drift: rejected"),
    ("monitor/drift_unseen", "log-lik. drift: unseen"), ("monitor/accuracy", "accuracy (monitor)"),
    ("monitor/topk_entropy", "top-k entropy, answers (bits)"), ("monitor/topk_mass", "top-k mass, answers"),
    ("monitor/topk_entropy_chosen", "top-k entropy, chosen (bits)"), ("monitor/topk_mass_chosen", "top-k mass, chosen"),
    ("monitor/kl", "KL(policy || ref), answers"), ("monitor/judge_reward", "judge reward"),
    ("monitor/length", "answer length"), ("monitor/distinct_2", "distinct-2"),
)

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; white-space: pre-wrap; font-family: monospace; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.note { color: #666; font-size: .9em; } .warning { color: #a40; }
"""


# ---- data gathering ---------------------------------------------------------------------------------

def frontier_points(run: Run) -> List[Dict[str, Any]]:
    """(kl, reward) points of a run, with a label and a kind (monitor / checkpoint / final / before / after)."""
    points = []
    for record in run.metrics:
        kl, reward = record.get("monitor/kl"), record.get("monitor/judge_reward")
        if isinstance(kl, (int, float)) and isinstance(reward, (int, float)):
            points.append({"kl": kl, "reward": reward, "step": record.get("step"), "kind": "monitor"})
    main = run.main_eval
    for name, data in run.evals.items():
        if isinstance(data.get("kl"), (int, float)) and isinstance(data.get("judge_reward"), (int, float)):
            points.append({"kl": data["kl"], "reward": data["judge_reward"], "step": data.get("step"),
                           "kind": "final" if data is main else "checkpoint"})
            if data is main and isinstance(data.get("judge_reward_reference"), (int, float)):
                points.append({"kl": 0.0, "reward": data["judge_reward_reference"], "step": 0, "kind": "reference"})
    summary = run.summary or {}
    for side in ("before", "after"):
        values = summary.get(side) or {}
        if isinstance(values.get("kl"), (int, float)) and isinstance(values.get("reward"), (int, float)):
            points.append({"kl": values["kl"], "reward": values["reward"], "step": None, "kind": side})
    return points


# ---- plots ------------------------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _save(fig, plt, directory: str, name: str) -> Tuple[str, bytes]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    path = safe_join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, data


def _grid(plt, count: int, columns: int = 3, size=(4.2, 3.0)):
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_series(plt, runs: Sequence[Run], keys, directory: str, name: str, title: str) -> Optional[Tuple[str, bytes]]:
    present = [(key, label) for key, label in keys if any(run.series(key)[0] for run in runs)]
    if not present:
        return None
    fig, axes = _grid(plt, len(present))
    for ax, (key, label) in zip(axes, present):
        for run in runs:
            steps, values = run.series(key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=run.name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, plt, directory, name)


def plot_frontier(plt, runs: Sequence[Run], directory: str) -> Optional[Tuple[str, bytes]]:
    data = [(run, frontier_points(run)) for run in runs]
    if not any(points for _, points in data):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"monitor": "o", "checkpoint": "s", "final": "*", "reference": "D", "before": "v", "after": "^"}
    for i, (run, points) in enumerate(data):
        if not points:
            continue
        color = f"C{i % 10}"
        trail = sorted([p for p in points if p["kind"] in ("monitor", "checkpoint")], key=lambda p: p["step"] or 0)
        if trail:
            ax.plot([p["kl"] for p in trail], [p["reward"] for p in trail], "-", color=color, alpha=0.6, label=run.name)
        for kind, marker in markers.items():
            chosen = [p for p in points if p["kind"] == kind]
            if chosen:
                ax.scatter([p["kl"] for p in chosen], [p["reward"] for p in chosen], marker=marker, color=color,
                           s=80 if kind in ("final", "after") else 25, zorder=3,
                           label=f"{run.name}: {kind}" if kind not in ("monitor", "checkpoint") else None)
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("judge reward")
    ax.set_title("reward vs KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, directory, "frontier.png")


def plot_margins(plt, runs: Sequence[Run], directory: str) -> Optional[Tuple[str, bytes]]:
    hists = [(run, (run.main_eval or {}).get("reward_margin_histogram")) for run in runs]
    hists = [(run, h) for run, h in hists if h and h.get("counts")]
    if not hists:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run, h in hists:
        edges, counts = h["edges"], h["counts"]
        total = max(sum(counts), 1)
        ax.stairs([c / total for c in counts], edges, fill=len(hists) == 1, alpha=0.6, label=run.name)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("implicit-reward margin  beta * (log-ratio chosen - log-ratio rejected)")
    ax.set_ylabel("fraction of pairs")
    ax.set_title("margin distribution on held-out pairs")
    if len(hists) > 1:
        ax.legend(fontsize=8)
    return _save(fig, plt, directory, "margins.png")


def plot_layers(plt, runs: Sequence[Run], directory: str) -> Optional[Tuple[str, bytes]]:
    traces = [(run, (run.main_eval or {}).get("layers")) for run in runs]
    traces = [(run, t) for run, t in traces if t and t.get("contraction")]
    if not traces:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (run, t) in enumerate(traces):
        color = f"C{i % 10}"
        for side, style in (("policy", "-o"), ("reference", "--x")):
            c = t["contraction"].get(side)
            if c:
                left.plot(range(len(c)), c, style, color=color, label=f"{run.name} {side}")
            tr = (t.get("transport") or {}).get(side)
            if tr:
                right.plot(range(len(tr)), tr, style, color=color, label=f"{run.name} {side}")
    left.set_title("contraction (spectral tail exponent) per layer")
    right.set_title("transport (Fisher-Rao, logit lens) from layer l to l+1")
    from matplotlib.ticker import MaxNLocator

    for ax, label in ((left, "layer"), (right, "layer l")):
        ax.set_xlabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, directory, "layers.png")


# ---- html -------------------------------------------------------------------------------------------

def _img(png: Optional[Tuple[str, bytes]], alt: str) -> str:
    if png is None:
        return ""
    path, data = png
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<img class="plot" id="{html.escape(os.path.splitext(os.path.basename(path))[0])}" '
            f'alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">')


def _e(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("-" if value is None else str(value))


def compare_table(rows: List[Dict[str, Any]]) -> str:
    columns = ["run"] + [c for c in rows[0] if c not in ("run", "sources") and any(r.get(c) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if c == 'run' else ''}>{_e(r.get(c))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def eval_table(runs: Sequence[Run]) -> str:
    evaluated = [run for run in runs if run.main_eval]
    if not evaluated:
        return ""
    head = "<th class=text>metric</th>" + "".join(
        f"<th>{html.escape(run.name)}</th><th>{html.escape(run.name)} (ref.)</th>" for run in evaluated)
    lines = []
    for label, key, ref_key in TABLE_ROWS:
        values = [(lookup(run.main_eval, key), lookup(run.main_eval, ref_key) if ref_key else None) for run in evaluated]
        if all(v is None for v, _ in values):
            continue
        cells = "".join(f"<td>{_e(v)}</td><td>{_e(r)}</td>" for v, r in values)
        lines.append(f"<tr><td class=text>{html.escape(label)}</td>{cells}</tr>")
    notes = "".join(f"<p class=note>{html.escape(run.name)}: {html.escape(n)}</p>"
                    for run in evaluated for n in run.main_eval.get("notes") or [])
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>{notes}"


def samples_table(run: Run, limit: int = 12) -> str:
    if not run.samples:
        return ""
    has_ref = any("reference" in row for row in run.samples)
    head = "<tr><th class=text>prompt</th><th class=text>policy</th>" + ("<th class=text>reference</th>" if has_ref else "") + "</tr>"
    lines = []
    for row in run.samples[:limit]:
        def answers(texts, scores):
            scores = scores or [None] * len(texts)
            return "\n".join(f"[{_e(s)}] {html.escape(t)}" if s is not None else html.escape(t) for t, s in zip(texts, scores))
        cells = (f"<td class=text>{html.escape(str(row.get('prompt', '')))}</td>"
                 f"<td class=text>{answers(row.get('policy', []), row.get('policy_scores'))}</td>")
        if has_ref:
            cells += f"<td class=text>{answers(row.get('reference', []), row.get('reference_scores'))}</td>"
        lines.append(f"<tr>{cells}</tr>")
    return f"<h3>{html.escape(run.name)}</h3><p class=note>[judge score] answer</p><table>{head}{''.join(lines)}</table>"


def warnings_list(runs: Sequence[Run]) -> str:
    items = []
    for run in runs:
        for record in run.metrics:
            for code in record.get("monitor/warnings") or []:
                items.append(f"<li class=warning>{html.escape(run.name)}, step {_e(record.get('step'))}: "
                             f"{html.escape(str(code))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p class=note>no monitor warnings</p>"


def build_report(paths: Sequence[str], output: str, title: Optional[str] = None) -> str:
    """Write ``output/index.html`` (self-contained) and the PNG plots next to it; returns the HTML path."""
    paths = list(paths)
    runs = [load_run(path, name) for path, name in zip(paths, unique_names(paths))]
    os.makedirs(output, exist_ok=True)
    plt = _matplotlib()
    title = title or "dpokit report: " + ", ".join(run.name for run in runs)
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p class=note>" + " | ".join(html.escape(os.path.abspath(p)) for p in paths) + "</p>"]
    rows = compare_rows(paths)
    parts += ["<h2>Runs</h2>", compare_table(rows)]
    if plt is None:
        parts.append("<p class=note>matplotlib is not installed: plots are omitted "
                     "(pip install 'dpokit[report]').</p>")
    plots = {}
    if plt is not None:
        plots["curves"] = plot_series(plt, runs, CURVES, output, "curves.png", "training")
        plots["monitor"] = plot_series(plt, runs, MONITOR_CURVES, output, "monitor.png", "monitored indicators")
        plots["frontier"] = plot_frontier(plt, runs, output)
        plots["margins"] = plot_margins(plt, runs, output)
        plots["layers"] = plot_layers(plt, runs, output)
    if plots.get("curves"):
        parts += ["<h2>Training curves</h2>", _img(plots["curves"], "training curves")]
    if any(any(k.startswith("monitor/") for k in r) for run in runs for r in run.metrics):
        parts += ["<h2>Over-optimisation indicators during training</h2>", _img(plots.get("monitor"), "monitored indicators"),
                  "<p class=note>drift: log-likelihood relative to the reference (nats per sequence); top-k: Shi et al. "
                  "(2024) indicators, k = 10, entropy in bits over the renormalised top-k.</p>", warnings_list(runs)]
    if plots.get("frontier"):
        parts += ["<h2>Reward vs KL</h2>", _img(plots["frontier"], "reward versus KL frontier"),
                  "<p class=note>lines: monitored steps in order; star: final evaluation; diamond: the reference's "
                  "own answers; triangles: demo before/after.</p>"]
    table = eval_table(runs)
    if table or plots.get("margins"):
        parts += ["<h2>Evaluation</h2>", _img(plots.get("margins"), "margin histogram"), table]
    if plots.get("layers"):
        parts += ["<h2>Layer trace</h2>", _img(plots["layers"], "layer-wise contraction and transport"),
                  "<p class=note>our SPINAL-style estimator: spectral tail exponent of each block's outputs, and the "
                  "Fisher-Rao distance between logit-lens distributions of adjacent blocks (docs/evaluation.md).</p>"]
    parts += grids_section(runs)  # diffusion runs: policy vs reference images / key frames
    samples = "".join(samples_table(run) for run in runs)
    if samples:
        parts += ["<h2>Sample answers: policy vs reference</h2>", samples]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    path = os.path.join(output, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path
