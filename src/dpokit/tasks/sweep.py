"""``dpokit sweep BASE --grid KEY=V1,V2 [--grid ...] --output DIR``: run a grid, evaluate every run the
same way, summarise over seeds.

BASE is a training config (YAML; keys are dotted config paths such as ``loss.name`` or ``train.seed``)
or ``demo`` (the built-in experiment of ``dpokit demo``; keys are its settings: ``loss``, ``seed``,
``task``, ``label_noise``, ``n_train_prompts``, ... and ``hparam.NAME`` for a loss hyperparameter,
dotted for nested ones such as ``hparam.modifiers.ld_alpha``). Seeds are one more key (``seed`` for
``demo``, ``train.seed`` for a config; ``--seed-key`` names another).

Layout of DIR::

    sweep.json           grid, one row per run (keys, status, final metrics, seconds, error), summary
    runs/<name>/         one run directory per grid point, named from its keys (loss-dpo_seed-0)
    runs/<name>/DONE     the run's row, written when it finished: a resumed sweep skips it

A run that raises is recorded with its error (and ``error.txt``) and the sweep goes on; running the same
command again retries failed and unfinished runs only. The summary groups the finished rows by every key
but the seed key and gives, per metric, mean, sample standard deviation, n and a 95% Student-t interval
(:mod:`dpokit.eval.stats`). ``dpokit report DIR`` draws it (:mod:`dpokit.eval.sweep_report`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError
from ..eval.stats import describe, format_interval
from ..paths import safe_join

DONE = "DONE"
SWEEP_FILE = "sweep.json"
QUICK = {"n_train_prompts": 200, "n_eval_prompts": 60, "warmup_steps": 120, "dpo_epochs": 2}  # `dpokit demo --quick`
DEMO_METRICS = ("reward", "preference_accuracy", "kl", "length", "reward_margin_mean")


# ---- the grid ---------------------------------------------------------------------------------------

def parse_grid(items: Sequence[str], option: str = "--grid") -> Dict[str, List[Tuple[str, Any]]]:
    """``["loss.name=dpo,ipo", "train.seed=0,1"]`` -> ``{key: [(text, value), ...]}`` in the given order;
    each value is read as YAML (``0.1`` a float, ``true`` a bool, ``dpo`` a string)."""
    grid: Dict[str, List[Tuple[str, Any]]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=V1,V2,... (e.g. loss.name=dpo,ipo), got {item!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ConfigError(f"{option} {item!r}: {key!r} is not a key (letters, digits, _ and dots)")
        if key in grid:
            raise ConfigError(f"{option} {key}: given twice (list every value in one {option} {key}=V1,V2)")
        texts = [t.strip() for t in text.split(",")]
        if any(t == "" for t in texts):
            raise ConfigError(f"{option} {item!r}: empty value (values are separated by single commas)")
        values = []
        for t in texts:
            try:
                values.append((t, yaml.safe_load(t)))
            except yaml.YAMLError:
                raise ConfigError(f"{option} {key}: cannot read value {t!r}") from None
        if len({t for t, _ in values}) != len(values):
            raise ConfigError(f"{option} {key}: a value is repeated in {text!r}")
        grid[key] = values
    return grid


def expand(grid: Dict[str, List[Tuple[str, Any]]]) -> List[Dict[str, Tuple[str, Any]]]:
    """Every combination, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_name(point: Dict[str, Tuple[str, Any]]) -> str:
    """``{loss: dpo, hparam.beta: 0.1}`` -> ``loss-dpo_hparam.beta-0.1`` (safe as one directory name)."""
    parts = [f"{key}-{text}" for key, (text, _) in point.items()]
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts)) or "run"
    return name.lstrip(".") or "run"


# ---- bases ------------------------------------------------------------------------------------------

class DemoBase:
    """The built-in experiment (:func:`dpokit.tasks.demo.run_demo`) as a sweep base."""

    name = "demo"
    seed_key = "seed"

    def __init__(self, fixed: Dict[str, Tuple[str, Any]], quick: bool = False):
        self.fixed = fixed
        self.quick = quick

    def settings(self, point: Dict[str, Tuple[str, Any]], run_dir: str):
        from ..config import set_by_path
        from .demo import DemoSettings, task_entry

        fields = {f.name: f for f in dataclasses.fields(DemoSettings)}
        settings = DemoSettings(output_dir=run_dir)
        if self.quick:
            for key, value in QUICK.items():
                setattr(settings, key, value)
        hparams: Dict[str, Any] = {}
        for key, (text, value) in {**self.fixed, **point}.items():
            if key.startswith("hparam."):
                set_by_path(hparams, f"{key[len('hparam.'):]}={text}")
                continue
            if key not in fields or key in ("output_dir", "loss_hparams"):
                allowed = sorted(k for k in fields if k not in ("output_dir", "loss_hparams")) + ["hparam.NAME"]
                raise ConfigError(f"sweep key {key!r}: not a demo setting; choose from {', '.join(allowed)}")
            default = getattr(DemoSettings(), key)
            if isinstance(default, bool) or not isinstance(default, (int, float, str)):
                raise ConfigError(f"sweep key {key!r}: cannot be swept")
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(default, str):
                value = text
            if type(value) is not type(default):
                raise ConfigError(f"sweep key {key}={text}: expected {type(default).__name__}")
            setattr(settings, key, value)
        settings.loss_hparams = hparams
        try:  # unknown task names, losses and hyperparameters fail before any run starts
            task_entry(settings.task)
        except ValueError as err:
            raise ConfigError(f"sweep key task={settings.task}: {err}") from None
        from ..losses import build_loss, get_spec
        from ..losses.checks import check_loss

        try:
            spec = get_spec(settings.loss)
            check_loss(build_loss({"name": settings.loss, **hparams}))
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"sweep run {run_name(point)} (loss {settings.loss}): "
                              f"{err.args[0] if err.args else err}") from None
        try:
            settings.data_kind(spec.needs.data)
        except ValueError as err:
            raise ConfigError(f"sweep run {run_name(point)}: {err}") from None
        return settings

    def check(self, point, run_dir: str) -> None:
        self.settings(point, run_dir)

    def run(self, point, run_dir: str, log: Callable[[str], None]) -> Dict[str, Any]:
        from .demo import run_demo

        if os.path.isdir(run_dir):  # an unfinished run: start it again from scratch
            shutil.rmtree(run_dir)
        summary = run_demo(self.settings(point, run_dir), log=log)
        metrics = {key: summary["after"][key] for key in DEMO_METRICS if key in summary["after"]}
        metrics["reward_before"] = summary["before"]["reward"]
        metrics["reward_gain"] = summary["after"]["reward"] - summary["before"]["reward"]
        metrics["train_pairs"] = summary["train_pairs"]
        return metrics


class ConfigBase:
    """A training config (``dpokit train CONFIG --set KEY=VALUE ...``) as a sweep base. A run's final
    metrics are the last logged value of every numeric key in its ``metrics.jsonl`` (so ``eval/*`` are
    those of the last evaluation on ``data.eval``) and the trainer's final state."""

    seed_key = "train.seed"

    def __init__(self, path: str, fixed: Dict[str, Tuple[str, Any]]):
        if not os.path.isfile(path):
            raise ConfigError(f"sweep base {path!r}: not a config file (or give `demo`)")
        self.name = path
        self.path = path
        self.fixed = fixed

    def overrides(self, point, run_dir: str) -> List[str]:
        return [f"{k}={text}" for k, (text, _) in {**self.fixed, **point}.items()] + [f"train.output_dir={run_dir}"]

    def check(self, point, run_dir: str) -> None:
        from ..preflight import checked_config

        checked_config(self.path, self.overrides(point, run_dir))

    def run(self, point, run_dir: str, log: Callable[[str], None]) -> Dict[str, Any]:
        from ..io import read_jsonl
        from ..online.loop import run_online
        from ..preflight import checked_config
        from ..train import Trainer

        config = checked_config(self.path, self.overrides(point, run_dir))
        resume = os.path.isdir(os.path.join(run_dir, "checkpoints"))
        result = run_online(config, resume=resume) if config.online.strategy else Trainer(config).fit(resume=resume)
        if result.get("status") != "completed":
            raise RuntimeError(f"training ended with status {result.get('status')!r}")
        metrics: Dict[str, Any] = {}
        path = os.path.join(run_dir, "metrics.jsonl")
        for record in read_jsonl(path) if os.path.exists(path) else []:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    metrics[key] = value
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.setdefault(key, value)
        return metrics


def make_base(base: str, fixed: Dict[str, Tuple[str, Any]], quick: bool = False):
    if base == "demo":
        return DemoBase(fixed, quick)
    if quick:
        raise ConfigError("--quick applies to the `demo` base only")
    return ConfigBase(base, fixed)


# ---- running ----------------------------------------------------------------------------------------

def _plain(point: Dict[str, Tuple[str, Any]]) -> Dict[str, Any]:
    return {key: value for key, (_, value) in point.items()}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _headline(metrics: Dict[str, Any]) -> str:
    keys = [k for k in ("reward", "kl", "length", "eval/rewards/accuracies", "loss") if k in metrics][:3]
    return "  ".join(f"{k} {metrics[k]:.3g}" for k in keys)


def run_sweep(base, grid: Dict[str, List[Tuple[str, Any]]], output: str, seed_key: Optional[str] = None,
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or resume) every point of ``grid`` on ``base``; write and return ``sweep.json``'s content."""
    if not grid:
        raise ConfigError("sweep: give at least one --grid KEY=V1,V2,...")
    points = expand(grid)
    seed_key = seed_key or base.seed_key
    names: List[str] = []
    for point in points:
        name = run_name(point)
        names.append(name if name not in names else f"{name}_{len(names)}")
    runs_dir = safe_join(output, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    for point, name in zip(points, names):  # every configuration is checked before the first run starts
        base.check(point, safe_join(runs_dir, name))
    rows: List[Dict[str, Any]] = []
    started, ran_seconds, ran = time.time(), 0.0, 0
    for i, (point, name) in enumerate(zip(points, names), 1):
        run_dir = safe_join(runs_dir, name)
        prefix = f"[sweep {i}/{len(points)}] {name}"
        done = os.path.join(run_dir, DONE)
        if os.path.exists(done):
            with open(done) as handle:
                row = json.load(handle)
            rows.append(row)
            log(f"{prefix}: finished earlier, skipped")
            continue
        log(f"{prefix}: running")
        t0 = time.time()
        row = {"run": name, "dir": os.path.relpath(run_dir, output), "keys": _plain(point)}
        try:
            os.makedirs(run_dir, exist_ok=True)
            lines: List[str] = []
            metrics = base.run(point, run_dir, lines.append)
            row.update(status="done", metrics=metrics, seconds=round(time.time() - t0, 1))
            with open(os.path.join(run_dir, "log.txt"), "w") as handle:
                handle.write("\n".join(lines) + "\n")
            with open(done, "w") as handle:
                json.dump(row, handle, indent=2)
            log(f"{prefix}: done in {row['seconds']:.0f} s  {_headline(metrics)}")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # recorded; the sweep goes on
            row.update(status="failed", error=f"{type(err).__name__}: {err}", metrics={},
                       seconds=round(time.time() - t0, 1))
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "error.txt"), "w") as handle:
                handle.write(traceback.format_exc())
            log(f"{prefix}: FAILED after {row['seconds']:.0f} s: {row['error']} (see {run_dir}/error.txt)")
        rows.append(row)
        ran_seconds += time.time() - t0
        ran += 1
        left = len(points) - i
        log(f"[sweep] {i}/{len(points)} runs, elapsed {_duration(time.time() - started)}"
            + (f", about {_duration(ran_seconds / ran * left)} left" if left else ""))
        _write(output, base, grid, seed_key, rows)
    result = _write(output, base, grid, seed_key, rows)
    failed = [r for r in rows if r["status"] != "done"]
    log(format_summary(result["summary"], result["metrics"]))
    if failed:
        log(f"[sweep] {len(failed)} run(s) failed: {', '.join(r['run'] for r in failed)} (run the command again to retry)")
    log(f"[sweep] wrote {os.path.join(output, SWEEP_FILE)}")
    return result


def summarise(rows: Sequence[Dict[str, Any]], seed_key: Optional[str]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Finished rows grouped by their keys except ``seed_key``; per metric :func:`describe`."""
    metrics: List[str] = []
    for row in rows:
        for key, value in (row.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in metrics:
                metrics.append(key)
    groups: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        if row.get("status") != "done":
            continue
        keys = {k: v for k, v in row["keys"].items() if k != seed_key}
        label = ", ".join(f"{k}={v}" for k, v in keys.items()) or "all"
        group = groups.setdefault(label, {"group": label, "keys": keys, "runs": [], "seeds": []})
        group["runs"].append(row["run"])
        if seed_key in row["keys"]:
            group["seeds"].append(row["keys"][seed_key])
    summary = []
    for group in groups.values():
        members = [r for r in rows if r["run"] in group["runs"]]
        group["metrics"] = {m: describe([r["metrics"].get(m) for r in members]) for m in metrics}
        summary.append(group)
    return summary, metrics


def _write(output, base, grid, seed_key, rows) -> Dict[str, Any]:
    summary, metrics = summarise(rows, seed_key)
    result = {"base": base.name, "grid": {k: [v for _, v in values] for k, values in grid.items()},
              "fixed": {k: v for k, (_, v) in getattr(base, "fixed", {}).items()}, "seed_key": seed_key,
              "metrics": metrics, "rows": rows, "summary": summary}
    path = os.path.join(output, SWEEP_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    return result


def format_summary(summary: Sequence[Dict[str, Any]], metrics: Sequence[str], limit: int = 6) -> str:
    """A text table: one line per group, ``mean ± 95% half-width`` per metric, and n."""
    shown = [m for m in ("reward", "kl", "length", "preference_accuracy") if m in metrics] or list(metrics)[:limit]
    rows = [["group", "n"] + list(shown)]
    for group in summary:
        n = max((s["n"] for s in group["metrics"].values()), default=0)
        rows.append([group["group"], str(n)] + [format_interval(group["metrics"][m]) for m in shown])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid of trainings (or demo runs), resumable, with a summary over seeds",
        description="Run every combination of the --grid values on BASE (a training config, or `demo`), "
                    "evaluate each run the same way, and write DIR/sweep.json with one row per run and a "
                    "summary over the seed key (mean, std, n, 95% t-interval). Running it again skips "
                    "finished runs. `dpokit report DIR` draws it.")
    p.add_argument("base", metavar="BASE", help="a YAML training config, or `demo` for the built-in task")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a key and its values, e.g. loss.name=dpo,ipo or train.seed=0,1,2 (demo: loss=dpo,ipo "
                        "seed=0,1,2 hparam.beta=0.1,0.5 label_noise=0,0.3 task=graded); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a value every run shares (same keys as --grid)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--seed-key", default=None, help="the key averaged over in the summary "
                                                    "(default: seed for demo, train.seed for a config)")
    p.add_argument("--quick", action="store_true", help="demo base: the small experiment of `dpokit demo --quick`")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    grid = parse_grid(args.grid)
    fixed = {k: v[0] for k, v in parse_grid(args.set, "--set").items()}
    for key in fixed:
        if key in grid:
            raise ConfigError(f"sweep: {key} is both in --grid and in --set")
    base = make_base(args.base, fixed, args.quick)
    logging.getLogger("dpokit").setLevel(logging.WARNING)  # the sweep's own progress lines instead

    def log(line: str) -> None:
        print(line, flush=True)

    result = run_sweep(base, grid, args.output, seed_key=args.seed_key, log=log)
    return 0 if all(r["status"] == "done" for r in result["rows"]) else 1
