"""From worker results to the report: per-configuration rates, the TRL ratios and the table."""

from __future__ import annotations

import platform
import re
from typing import Any, Dict, List, Sequence


def summarise(result: Dict[str, Any], batches: Sequence, warmup: int, flops: List[float], peak_flops: float,
              needed_flops: List[float]) -> Dict[str, Any]:
    """Rates of one worker run over its steps after ``warmup``: pairs/s, tokens/s (``prompt +
    completion`` per row, padding excluded), peak MB and the FLOP fractions of the matmul peak."""
    measured = slice(warmup, None)
    seconds = sum(result["times"][measured])
    pairs = sum(len(b) for b in batches[measured])
    tokens = sum(len(p) + len(c) for b in batches[measured] for _, p, cs in b for c in cs)
    achieved = sum(flops[measured]) / seconds
    return {
        "pairs_per_s": pairs / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_memory_mb": result["peak_bytes"] / 2 ** 20,
        "flops_fraction": achieved / peak_flops,
        "achieved_flops": achieved,
        "flops_fraction_head_where_needed": sum(needed_flops[measured]) / seconds / peak_flops,
        "step_seconds": result["times"],
        "losses": result["losses"],
        "memory_method": result["memory_method"],
        **{k: result[k] for k in ("trl_version", "optimizer") if k in result},
    }


def fastest(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Each configuration's fastest run, with the pairs/s and peak MB of all its runs."""
    best = {}
    for label, measured in runs.items():
        top = max(measured, key=lambda r: r["pairs_per_s"])
        best[label] = dict(top, pairs_per_s_runs=[r["pairs_per_s"] for r in measured],
                           peak_memory_mb_runs=[r["peak_memory_mb"] for r in measured])
    return best


def ratios(results: Dict[str, Dict[str, Any]], trl: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """Speed and memory of each configuration as multiples of TRL's, and the first-step loss gap."""
    return {
        label: {"pairs_per_s": r["pairs_per_s"] / trl["pairs_per_s"],
                "peak_memory": r["peak_memory_mb"] / trl["peak_memory_mb"],
                "first_step_loss_difference": r["losses"][0] - trl["losses"][0]}
        for label, r in results.items()
    }


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as handle:
            match = re.search(r"^model name\s*:\s*(.+)$", handle.read(), re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def model_name(setup: Dict[str, Any]) -> str:
    return {"llama": "Llama", "qwen2": "Qwen2"}.get(setup.get("arch", "llama"), setup.get("arch", "llama"))


def heads(setup: Dict[str, Any]) -> str:
    """``"14 heads (2 KV), "`` where the setup says so (older reports do not)."""
    if "heads" not in setup or "kv_heads" not in setup:
        return ""
    kv = f" ({setup['kv_heads']} KV)" if setup["kv_heads"] != setup["heads"] else ""
    return f"{setup['heads']} heads{kv}, "


def vocab(setup: Dict[str, Any]) -> str:
    model = setup.get("model_vocab") or setup["vocab_size"]
    return str(model) if model == setup["vocab_size"] else f"{model} (tokenizer {setup['vocab_size']})"


def format_report(report: Dict[str, Any]) -> str:
    """The report as the table ``dpokit bench`` prints."""
    m, s = report["machine"], report["setup"]
    where = m["gpu"] or f"{m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    lines = [
        f"dpokit bench on {m['device']} ({where}), torch {m['torch']}",
        f"data: {s['data']}; batch {s['batch_size']} pairs, max length {s['max_length']}, "
        f"{s['steps']} measured steps after {s['warmup']} warm-up"
        + (f"; every row {s['sequence_length']} tokens ({s['completion_length']} completion)"
           if s.get("sequence_length") else ""),
        f"model: {model_name(s)} {s['layers']} layers x {s['hidden_size']}, {heads(s)}vocab {vocab(s)}, "
        f"{s['parameters'] / 1e6:.2f}M parameters, {s['dtype']}, attention {s['attn']}",
        f"matmul peak: {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({s['dtype']}); step time: {s['clock']} clock, "
        f"fastest of {s['repeats']} run(s)",
        "",
    ]
    rows = [(label, r) for label, r in report["layouts"].items()]
    if "trl" in report:
        rows.append(("TRL DPOTrainer", report["trl"]))
    header = f"{'configuration':<26}{'pairs/s':>9}{'tokens/s':>10}{'peak MB':>9}{'GFLOP/s':>9}{'% peak':>8}" \
             f"{'% peak*':>9}{'loss@1':>10}{'loss@2':>10}"
    if "ratios" in report:
        header += f"{'x TRL speed':>13}{'x TRL mem':>11}"
    lines += [header, "-" * len(header)]
    for label, r in rows:
        losses = r["losses"] + [float("nan")] * 2
        line = (f"{label:<26}{r['pairs_per_s']:>9.2f}{r['tokens_per_s']:>10.0f}{r['peak_memory_mb']:>9.0f}"
                f"{r['achieved_flops'] / 1e9:>9.1f}{100 * r['flops_fraction']:>7.1f}%"
                f"{100 * r['flops_fraction_head_where_needed']:>8.1f}%{losses[0]:>10.5f}{losses[1]:>10.5f}")
        ratio = report.get("ratios", {}).get(label)
        if ratio:
            line += f"{ratio['pairs_per_s']:>12.2f}x{ratio['peak_memory']:>10.2f}x"
        lines.append(line)
    for label, f in report.get("failed", {}).items():
        lines.append(f"{'TRL DPOTrainer' if label == 'trl' else label:<26}{'failed: ' + f['failed']}")
    kernels = {label: r["attn"] for label, r in rows if "attn" in r}
    if kernels:
        lines.append("attention: " + ", ".join(f"{label} {attn}" for label, attn in kernels.items()))
    if "reference_cache" in report:
        c = report["reference_cache"]
        lines.append(f"\nreference cache: built once in {c['build_seconds']:.1f} s for {c['examples']} examples "
                     "(not in the step times)")
    first = next(iter(report["layouts"].values()), report.get("trl"))
    if first is not None:
        lines.append(f"peak memory: {first['memory_method']}, above the process before the models were loaded")
    lines.append("% peak: model FLOP/s (6N per trained token, 2N per reference token, attention included) over "
                 "the matmul peak; % peak*: the same with the LM head counted only where DPO needs it")
    return "\n".join(lines)
