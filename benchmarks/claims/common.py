"""Shared pieces of the claim scripts: run methods x seeds through ``dpokit sweep``'s runner on the demo
family, paired differences per seed with a 95% t-interval, the table and the verdict.

Every method runs from the same seeds, and a seed fixes the task split, the model initialisation, the
warm-up, the sampled pairs and the flipped labels, so method A and method B at seed s differ only in the
objective: differences are taken per seed (paired) before the interval is computed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

# `--quick`: a few optimizer steps on a tiny split; exercises the script end to end, proves nothing
QUICK = {"n_train_prompts": "48", "n_eval_prompts": "16", "warmup_steps": "20", "dpo_epochs": "1",
         "samples_per_prompt": "4"}


def parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--quick: 0)")
    p.add_argument("--out", default=out, help="sweep directories go here; finished runs are reused")
    p.add_argument("--quick", action="store_true", help="a few steps on a tiny split (a smoke test, not evidence)")
    return p


def seeds_of(args) -> List[int]:
    return args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])


def run_methods(methods: Sequence[Tuple[str, Dict[str, Any]]], seeds: Sequence[int], out: str, quick: bool,
                shared: Optional[Dict[str, Any]] = None, log=print) -> Dict[str, Dict[int, Dict[str, float]]]:
    """``{method: {seed: final metrics}}``; each method is one ``dpokit sweep demo --grid seed=...`` run
    in ``out/<method>``, with its settings (and ``shared``) as ``--set`` values."""
    from dpokit.tasks.sweep import DemoBase, parse_grid, run_sweep

    quiet_logs()
    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    for label, settings in methods:
        items = {**(QUICK if quick else {}), **{k: str(v) for k, v in {**(shared or {}), **settings}.items()}}
        fixed = {k: v[0] for k, v in parse_grid([f"{k}={v}" for k, v in items.items()], "--set").items()}
        directory = os.path.join(out, label.replace(" ", "_").replace("/", "-"))
        log(f"== {label}: {', '.join(f'{k}={v}' for k, v in items.items())}")
        sweep = run_sweep(DemoBase(fixed, quick=quick), parse_grid(["seed=" + ",".join(map(str, seeds))]),
                          directory, log=lambda line: log("   " + line) if line.startswith("[sweep") else None)
        failed = [r for r in sweep["rows"] if r["status"] != "done"]
        if failed:
            raise RuntimeError(f"{label}: {failed[0]['run']} failed: {failed[0]['error']}")
        results[label] = {r["keys"]["seed"]: {**r["metrics"], "seconds": r["seconds"]} for r in sweep["rows"]}
        ROWS.extend({**r, "run": f"{label} / {r['run']}", "dir": os.path.relpath(os.path.join(directory, r["dir"]), out),
                     "keys": {"method": label, **r["keys"]}} for r in sweep["rows"])
    return results


def cached_summary(directory: str, run) -> Dict[str, Any]:
    """A finished run's ``summary.json`` in ``directory``, running ``run()`` first when it is not there
    (for claims whose runs are not sweeps: the online demos)."""
    path = os.path.join(directory, "summary.json")
    if not os.path.exists(path):
        run()
    with open(path) as handle:
        return json.load(handle)


def quiet_logs():
    """Lower dpokit's and transformers' log levels (progress bars off); returns a ``log`` that drops lines."""
    logging.getLogger("dpokit").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return lambda *_: None


ROWS: List[Dict[str, Any]] = []  # every run of this process, keyed by method and seed (for sweep.json)


def describe_values(values):
    from dpokit.eval.stats import describe

    return describe(values)


def interval(stats) -> str:
    from dpokit.eval.stats import format_interval

    return format_interval(stats)


def ci_text(stats) -> str:
    """``[low, high]`` of the 95% interval, three decimals (``n/a`` with one seed)."""
    return "n/a" if not stats.get("ci95") else "[{:.3f}, {:.3f}]".format(*stats["ci95"])


def metric(results, method: str, key: str):
    return describe_values([results[method][s][key] for s in sorted(results[method])])


def paired(results, a: str, b: str, key: str):
    """Per-seed ``b - a`` of ``key``, described (mean, std, 95% t-interval)."""
    seeds = sorted(set(results[a]) & set(results[b]))
    return describe_values([results[b][s][key] - results[a][s][key] for s in seeds])


def table(results, keys: Sequence[str]) -> str:
    lines = ["| method | n | " + " | ".join(keys) + " | per-seed reward |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for method, per_seed in results.items():
        cells = [interval(metric(results, method, k)) for k in keys]
        seeds = " / ".join(f"{per_seed[s]['reward']:.3f}" for s in sorted(per_seed))
        lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines)


def lower(stats) -> Optional[float]:
    return stats["ci95"][0] if stats.get("ci95") else None


def upper(stats) -> Optional[float]:
    return stats["ci95"][1] if stats.get("ci95") else None


def verdict(checks: Sequence[Tuple[str, Optional[bool]]]) -> str:
    """Each check is (text, True/False/None); None (too few seeds for an interval) makes the claim undecided."""
    lines = [f"  [{'yes' if ok else 'no' if ok is False else 'n/a'}] {text}" for text, ok in checks]
    if any(ok is None for _, ok in checks):
        word = "UNDECIDED (too few seeds for an interval)"
    else:
        word = "HOLDS" if all(ok for _, ok in checks) else "DOES NOT HOLD"
    return "\n".join(lines + [f"claim: {word}"])


# ---- continual learning (continual.py, vlm_continual.py) -------------------------------------------
CONTINUAL_DPO, CONTINUAL_PHI = "dpo", "phi_dpo (gamma 2)"
CONTINUAL_METHODS = ((CONTINUAL_DPO, {"loss": "dpo"}),
                     (CONTINUAL_PHI, {"loss": "phi_dpo", "loss_hparams": {"gamma": 2.0}}))


def _continual_row(results, key: str, label: str) -> str:
    cells = [interval(metric(results, m, key)) for m, _ in CONTINUAL_METHODS]
    diff = paired(results, CONTINUAL_DPO, CONTINUAL_PHI, key)
    return f"| {label} | " + " | ".join(cells) + f" | {interval(diff)} | {ci_text(diff)} |"


def continual_table(results, tasks: Sequence[str]) -> List[str]:
    """Forgetting, final average reward, backward transfer and the per-task rows, each method with its
    interval and phi-DPO minus DPO paired by seed, then each method's per-seed forgetting."""
    lines = ["| metric | " + " | ".join(m for m, _ in CONTINUAL_METHODS) + " | phi - dpo (paired) | 95% CI |",
             "|---|" + "---|" * (len(CONTINUAL_METHODS) + 2),
             _continual_row(results, "forgetting", "forgetting"),
             _continual_row(results, "final_average_reward", "final average reward"),
             _continual_row(results, "backward_transfer", "backward transfer")]
    lines += [_continual_row(results, f"reward/{j}", f"final reward, task {j} ({name})") for j, name in enumerate(tasks)]
    lines += [_continual_row(results, f"forgetting/{j}", f"forgetting, task {j} ({name})")
              for j, name in enumerate(tasks[:-1])]
    return ["\n".join(lines), ""]


def per_seed_forgetting(results, label: str) -> str:
    return f"per-seed forgetting, {label}: " + " / ".join(f"{results[label][s]['forgetting']:.3f}"
                                                          for s in sorted(results[label]))


def continual_verdict(results) -> str:
    high = upper(paired(results, CONTINUAL_DPO, CONTINUAL_PHI, "forgetting"))
    return verdict([("phi-DPO forgets less than DPO (CI of the forgetting difference below 0)",
                     None if high is None else high < 0)])


def finish(name: str, args, results, text: str, started: float, sweep: bool = True) -> Dict[str, Any]:
    """Print ``text``, write ``claim.json`` and (``sweep``: runs made through :func:`run_methods`) ``sweep.json``."""
    seconds = time.time() - started
    run_seconds = sum(v.get("seconds", 0.0) for per_seed in results.values() for v in per_seed.values())
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    print(text)
    print(f"\n{name}: seeds {seeds_of(args)}{' (quick)' if args.quick else ''}; {seconds:.0f} s on {machine} "
          f"(the runs took {run_seconds:.0f} s when they ran)")
    record = {"claim": name, "seeds": seeds_of(args), "quick": args.quick, "seconds": round(seconds, 1),
              "run_seconds": round(run_seconds, 1),  # the runs' own time, also when they were reused
              "machine": machine, "results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
              "output": text}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "claim.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    if sweep:
        write_sweep(args.out, name)
    return record


def write_sweep(out: str, name: str) -> None:
    """``out/sweep.json`` over every method's runs (grouped by method), so ``dpokit report OUT`` draws the
    whole claim: metric per method, reward vs KL per method, curves overlaid."""
    from dpokit.tasks.sweep import summarise

    rows = [r for r in ROWS if os.path.isdir(os.path.join(out, r["dir"]))]
    summary, metrics = summarise(rows, "seed")
    methods = list(dict.fromkeys(r["keys"]["method"] for r in rows))
    seeds = list(dict.fromkeys(r["keys"]["seed"] for r in rows))
    with open(os.path.join(out, "sweep.json"), "w") as handle:
        json.dump({"base": f"demo (claim {name})", "grid": {"method": methods, "seed": seeds}, "fixed": {},
                   "seed_key": "seed", "metrics": metrics, "rows": rows, "summary": summary}, handle, indent=2)
    ROWS.clear()
