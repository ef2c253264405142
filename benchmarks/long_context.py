"""Peak memory and speed of the DPO step against sequence length, at a real model vocabulary.

    python benchmarks/long_context.py --out benchmarks/results/long-context.json
    python benchmarks/long_context.py --lengths 1024 2048 4096 8192 --trl-lengths 1024 2048 4096 8192

Runs ``dpokit bench --sequence-length L`` for each length (every row exactly L tokens: a prompt of
7L/8 and completions of L/8), with ``--model-vocab`` rows in the embedding and LM head (default
151,936, Qwen2's padded vocabulary) and, at the ``--trl-lengths``, TRL's ``DPOTrainer`` in the same
run. Each configuration runs in its own process under ``--memory-limit-gb`` (RLIMIT_AS), so a
configuration that needs more is reported as out of memory instead of straining the machine.
Then fits ``peak = a + b L`` to each configuration's peak memory by least squares and reports the
residuals (and the same fit's prediction error at the longest length when fitted on the others),
and writes everything as one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Dict[str, float]:
    """Least-squares ``y = a + b x``: intercept, slope, residuals and the largest relative residual."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    return {"intercept": intercept, "slope": slope, "residuals": residuals,
            "max_relative_residual": max(abs(r) / y for r, y in zip(residuals, ys))}


def growth(lengths: List[int], peaks: List[float]) -> Dict[str, object]:
    out: Dict[str, object] = {"lengths": lengths, "peak_memory_mb": peaks}
    if len(lengths) >= 2:
        fit = linear_fit(lengths, peaks)
        out["fit_mb"] = {"intercept_mb": fit["intercept"], "mb_per_token": fit["slope"],
                         "residuals_mb": fit["residuals"], "max_relative_residual": fit["max_relative_residual"]}
    if len(lengths) >= 3:  # extrapolate the fit of the shorter lengths to the longest one
        head = linear_fit(lengths[:-1], peaks[:-1])
        predicted = head["intercept"] + head["slope"] * lengths[-1]
        out["extrapolation"] = {"fitted_on": lengths[:-1], "length": lengths[-1], "predicted_mb": predicted,
                                "measured_mb": peaks[-1], "relative_error": (peaks[-1] - predicted) / peaks[-1]}
    return out


def summarise(runs: Dict[str, dict]) -> Dict[str, dict]:
    """Per configuration: peak memory and tokens/s at each length, the linear fit, the failures."""
    labels = {label for r in runs.values() for label in r.get("layouts", {})} | {"trl"}
    summary = {}
    for label in sorted(labels):
        points = [(int(l), (r["trl"] if label == "trl" else r["layouts"][label]))
                  for l, r in runs.items() if (label == "trl" and "trl" in r) or label in r.get("layouts", {})]
        summary[label] = growth([l for l, _ in points], [p["peak_memory_mb"] for _, p in points])
        summary[label]["tokens_per_s"] = [p["tokens_per_s"] for _, p in points]
        summary[label]["failed"] = {l: r["failed"][label]["failed"] for l, r in runs.items()
                                    if label in r.get("failed", {})}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--trl-lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--layouts", default="padded,packed,prompt_shared")
    parser.add_argument("--model-vocab", type=int, default=151936)
    parser.add_argument("--memory-limit-gb", type=float, default=16.0)
    parser.add_argument("--out", default="benchmarks/results/long-context.json")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER,
                        help="after --: further dpokit bench flags (model size, batch, clock ...)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="instead of running: combine the runs of earlier output files (later files win)")
    args = parser.parse_args(argv)
    if args.merge:
        merged = {"runs": {}}
        for path in args.merge:
            with open(path) as handle:
                part = json.load(handle)
            merged.update({k: v for k, v in part.items() if k not in ("runs", "summary")})
            merged.setdefault("parts", []).append({k: part.get(k) for k in ("memory_limit_gb", "bench_flags")})
            merged["runs"].update(part["runs"])
        merged["runs"] = dict(sorted(merged["runs"].items(), key=lambda kv: int(kv[0])))
        merged["summary"] = summarise(merged["runs"])
        with open(args.out, "w") as handle:
            json.dump(merged, handle, indent=2)
        print(json.dumps(merged["summary"], indent=2))
        return 0
    extra = [a for a in args.bench_args if a != "--"] or [
        "--arch", "qwen2", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
        "--batch-size", "1", "--steps", "2", "--warmup", "1", "--threads", "1", "--clock", "cpu", "--device", "cpu"]
    runs = {}
    for length in args.lengths:
        argv_l = [sys.executable, "-m", "dpokit.bench", "--json", "--sequence-length", str(length),
                  "--model-vocab", str(args.model_vocab), "--memory-limit-gb", str(args.memory_limit_gb),
                  "--layouts", args.layouts, *extra]
        if length in args.trl_lengths:
            argv_l += ["--compare", "trl"]
        print(f"length {length}: {' '.join(argv_l[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(argv_l, capture_output=True, text=True)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            print(proc.stderr[-3000:], file=sys.stderr)
            runs[str(length)] = {"error": proc.stderr[-3000:]}
            continue
        runs[str(length)] = json.loads(proc.stdout)
        report = runs[str(length)]
        for label, r in [*report["layouts"].items(), *([("trl", report["trl"])] if "trl" in report else [])]:
            print(f"  {label}: {r['peak_memory_mb']:.0f} MB, {r['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
        for label, f in report.get("failed", {}).items():
            print(f"  {label}: {f['failed']}", file=sys.stderr)
    summary = summarise(runs)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"model_vocab": args.model_vocab, "memory_limit_gb": args.memory_limit_gb, "bench_flags": extra,
                   "summary": summary, "runs": runs}, handle, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
