"""``dpokit bench --modality steps``: how fast does the MCTS-DPO search turn generated tokens into step pairs?

The arithmetic task (:mod:`dpokit.tasks.arithmetic`, ``--n-ops`` operations per problem), a word-level
tokenizer and a tiny Llama (``--hidden-size``, ``--layers``, ``--heads``) warmed up for
``--warmup-steps`` supervised steps on solutions whose steps are wrong 30% of the time. Then the same
search (:class:`dpokit.steps.search.MCTS`, the step verifier as evaluator, no outcome filter) runs on
the same ``--problems`` held-out problems twice in this process, with the two expansion layouts of
:class:`dpokit.steps.expand.StepSampler`:

``shared_prefix_kv``  the prefix runs once, its key/value cache is repeated for the siblings, which
                      decode together (one forward per token for all of them);
``naive_reencode``    every sibling decodes alone and every token re-encodes the whole context.

Reported per layout (``--json``: one object): ``expansions_per_s`` (calls of the sampler per second
of search time, wall clock or ``--clock cpu``), ``step_pairs_per_1k_generated_tokens`` (pairs the
trees give per 1000 tokens of the returned candidates), ``processed_per_generated_token`` (tokens the
model read per token generated), and the counts; plus the shared/naive ratios. With ``--repeats N``
the layouts alternate N times and each reports its median rate. The two layouts draw different
samples (the siblings share one random stream in the shared layout), so their trees and pair counts
differ; the rates are what is compared.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Dict, List

LAYOUT_NAMES = ("shared_prefix_kv", "naive_reencode")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("--modality steps (MCTS-DPO search on the arithmetic task)")
    group.add_argument("--problems", type=int, default=10, help="held-out problems searched (default 10)")
    group.add_argument("--n-ops", type=int, default=3, help="operations per problem (default 3)")
    group.add_argument("--warmup-steps", type=int, default=150, help="supervised warm-up steps (default 150)")
    group.add_argument("--n-iters", type=int, default=4, help="MCTS iterations per move (x4 at the root; default 4)")
    group.add_argument("--max-step-tokens", type=int, default=16, help="tokens per sampled step (default 16)")


def setup(args):
    """The task, tokenizer, warmed-up model (on ``device``), search task, prompts and separator ids."""
    import torch

    from ..scoring.steps import separator_ids
    from ..steps.search import SearchTask
    from ..tasks.arithmetic import STEP_SEPARATOR, ArithmeticSearchTask, ArithmeticTask
    from ..tiny import tiny_llama, train_tokenizer
    from ..train.sft import sft_train

    torch.manual_seed(args.seed)
    task = ArithmeticTask(n_ops=args.n_ops, seed=args.seed)
    train, held = task.split(400, args.problems)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                       max_position_embeddings=160, seed=args.seed, tokenizer=tokenizer)
    sft_train(model, tokenizer, task.demonstrations(train, 0.3), steps=args.warmup_steps, seed=args.seed)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    hooks = ArithmeticSearchTask(task)
    decode = lambda ids: tokenizer.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
    search_task = SearchTask(evaluate=hooks.check, outcome=hooks.outcome, decode=decode, gold=hooks.gold)
    return model, tokenizer, search_task, [task.prompt(p) for p in held], sep, device


def run(args, workdir: str = "") -> int:
    """The steps benchmark (module docstring) for the parsed ``dpokit bench`` arguments."""
    import torch

    from ..steps.bench import run_search
    from ..steps.search import SearchConfig
    from .report import cpu_name
    from .workers import quiet

    quiet()
    if getattr(args, "compare", None):
        raise SystemExit(f"--compare {args.compare}: not available with --modality steps (it compares two searches "
                         "of dpokit's own: shared-prefix KV cache and naive re-encoding)")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    model, tokenizer, search_task, prompts, sep, device = setup(args)
    clock = time.perf_counter if (args.clock == "wall" or device.startswith("cuda")) else time.process_time
    config = SearchConfig(n_iters=args.n_iters, depth_limit=args.n_ops + 2, filter_correct=False, seed=args.seed)
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in LAYOUT_NAMES}
    for _ in range(max(1, args.repeats)):
        for shared, name in ((True, LAYOUT_NAMES[0]), (False, LAYOUT_NAMES[1])):
            runs[name].append(run_search(model, tokenizer, search_task, prompts, sep, config, shared,
                                         args.max_step_tokens, clock=clock))
    layouts = {name: _median(rows) for name, rows in runs.items()}
    a, b = layouts[LAYOUT_NAMES[0]], layouts[LAYOUT_NAMES[1]]
    report = {
        "benchmark": "steps_search",
        "setup": {"problems": len(prompts), "n_ops": args.n_ops, "warmup_steps": args.warmup_steps,
                  "n_iters": args.n_iters, "root_iters_factor": config.root_iters_factor,
                  "n_actions": config.n_actions, "depth_limit": config.depth_limit,
                  "max_step_tokens": args.max_step_tokens, "hidden_size": args.hidden_size, "layers": args.layers,
                  "heads": args.heads, "parameters": sum(p.numel() for p in model.parameters()),
                  "device": device, "clock": "wall" if clock is time.perf_counter else "cpu",
                  "threads": torch.get_num_threads(), "repeats": max(1, args.repeats), "seed": args.seed,
                  "cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version()},
        "layouts": layouts,
        "ratios": {"expansions_per_s": _ratio(a["expansions_per_s"], b["expansions_per_s"]),
                   "step_pairs_per_1k_generated_tokens": _ratio(a["step_pairs_per_1k_generated_tokens"],
                                                                b["step_pairs_per_1k_generated_tokens"]),
                   "processed_per_generated_token": _ratio(a["processed_per_generated_token"],
                                                           b["processed_per_generated_token"])},
        "seconds_total": round(time.time() - started, 1),
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _median(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    out = dict(rows[0])
    for key in ("seconds", "expansions_per_s"):
        out[key] = round(statistics.median(row[key] for row in rows), 3)
    if len(rows) > 1:
        out["expansions_per_s_runs"] = [row["expansions_per_s"] for row in rows]
    return out


def _ratio(a: float, b: float):
    return round(a / b, 3) if b else None


def format_report(report: Dict[str, Any]) -> str:
    s = report["setup"]
    lines = [f"MCTS-DPO search, arithmetic ({s['n_ops']} ops), {s['problems']} problems, tiny Llama "
             f"{s['parameters'] / 1e6:.2f}M parameters, {s['device']}, {s['clock']} clock, {s['threads']} thread(s)", "",
             "| layout | expansions/s | step pairs / 1k generated tokens | tokens read / generated | expansions | "
             "generated tokens | step pairs |", "|---|---|---|---|---|---|---|"]
    for name, row in report["layouts"].items():
        lines.append(f"| {name} | {row['expansions_per_s']:.2f} | {row['step_pairs_per_1k_generated_tokens']:.2f} | "
                     f"{row['processed_per_generated_token']:.2f} | {row['expansions']} | {row['generated_tokens']} | "
                     f"{row['step_pairs']} |")
    r = report["ratios"]
    lines += ["", f"shared / naive: expansions/s {r['expansions_per_s']}x, step pairs per 1k tokens "
              f"{r['step_pairs_per_1k_generated_tokens']}x, tokens read per generated token "
              f"{r['processed_per_generated_token']}x"]
    return "\n".join(lines)
