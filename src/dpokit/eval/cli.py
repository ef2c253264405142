"""``dpokit eval``, ``dpokit report`` and ``dpokit compare`` (registered through ``COMMAND_MODULES``)."""

from __future__ import annotations

import json
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint against its reference: implicit rewards, generations, diagnostics",
        description="Evaluate a model (a model directory, a run directory or RUN/checkpoints/step-N) against its "
                    "reference on held-out pairs (--data) and, with --generate N, on sampled answers. Prints JSON "
                    "(or a table with --format table); --output writes eval.json and samples.jsonl.")
    p.add_argument("--model", required=True, help="model dir, run dir (uses final/) or RUN/checkpoints/step-N")
    p.add_argument("--data", default=None, help="held-out preference pairs")
    p.add_argument("--ref", default=None, help="reference model (default: the run's reference when --model is a "
                                               "run or checkpoint; 'none' for reference-free implicit rewards)")
    p.add_argument("--loss", default=None, help="also report this loss on the pairs")
    p.add_argument("--beta", type=float, default=None, help="implicit-reward scale (default: the loss's or the run's, else 0.1)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="use at most this many pairs")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="answers sampled per prompt (0: none)")
    p.add_argument("--prompts", default=None, help="prompts to sample from (.jsonl/.json with 'prompt', or .txt); "
                                                   "default: the prompts of --data")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--judge", default=None, help="'parity' (built-in), 'module:function' or 'file.py:function'")
    p.add_argument("--reward-model", default=None, metavar="PATH",
                   help="judge with a sequence-classification reward model (e.g. from `dpokit train-rm`)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=10, help="k of the top-k mass/entropy indicators")
    p.add_argument("--layer-positions", type=int, default=512, help="token positions used by the layer trace")
    p.add_argument("--no-diagnostics", action="store_true", help="skip drift, top-k on pairs, separability, layers")
    p.add_argument("--output", default=None, help="directory (writes eval.json, samples.jsonl) or a .json path")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("report", help="self-contained HTML report of one or more runs (curves, frontier, samples)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", default=None, help="output directory (default: RUN_DIR/report for one run, "
                                                  "./report for several); holds index.html and the PNGs")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("compare", help="final metrics of several runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_eval(args) -> int:
    from ..losses import build_loss
    from ..data import load_examples, tokenize_examples
    from ..models import load_causal_lm
    from ..config import ModelConfig
    from .runs import default_reference, load_model_for_eval
    from .suite import EvalSettings, evaluate_checkpoint, format_eval_table, load_prompts, prompts_from_texts, write_eval

    if not args.data and not (args.prompts and args.generate):
        print("dpokit eval: error: give --data (held-out pairs) and/or --prompts with --generate N", file=sys.stderr)
        return 2
    policy, tokenizer, info = load_model_for_eval(args.model, args.trust_remote_code)
    run_config = (info["config"] or {}) if info["kind"] in ("run", "checkpoint") else {}
    ref_path = args.ref
    if ref_path is None and info["kind"] in ("run", "checkpoint"):
        ref_path = default_reference(run_config)
    if ref_path == "none":
        ref_path = None
    reference = load_causal_lm(ref_path, ModelConfig(name_or_path=ref_path, trust_remote_code=args.trust_remote_code)).eval() \
        if ref_path else None
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy.to(device)
    if reference is not None:
        reference.to(device)
    loss_fn = None
    if args.loss:
        section = {"name": args.loss}
        if args.beta is not None:
            section["beta"] = args.beta
        loss_fn = build_loss(section)
    beta = args.beta
    if beta is None and loss_fn is not None:
        beta = getattr(loss_fn, "hparams", {}).get("beta")
    if beta is None:
        beta = (run_config.get("loss") or {}).get("beta")
    beta = float(beta) if beta is not None else 0.1
    pairs, dropped = [], 0
    if args.data:
        examples = load_examples(args.data, "pairs", limit=args.limit)
        pairs, report = tokenize_examples(examples, tokenizer, max_length=args.max_length)
        dropped = len(report.dropped)
    prompts = prompts_from_texts(load_prompts(args.prompts), tokenizer) if args.prompts else None
    settings = EvalSettings(beta=beta, k=args.topk, samples=args.generate, max_prompts=args.max_prompts,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, batch_size=args.batch_size, diagnostics=not args.no_diagnostics,
                            layer_positions=args.layer_positions)
    judge = args.judge
    if args.reward_model:
        if judge:
            print("dpokit eval: error: give --judge or --reward-model, not both", file=sys.stderr)
            return 2
        from ..preference.judges import RewardModelJudge

        judge = RewardModelJudge.from_pretrained(args.reward_model, args.trust_remote_code, device=str(device))
    result, rows = evaluate_checkpoint(policy, reference, tokenizer, pairs, prompts, judge, loss_fn, settings)
    if args.reward_model:
        result["judge"] = f"reward_model:{args.reward_model}"
    result.update(model=args.model, reference=ref_path, dropped_by_truncation=dropped, step=info.get("step"),
                  loss_name=args.loss or (run_config.get("loss") or {}).get("name"))
    if args.output:
        path = write_eval(result, rows, args.output)
        print(f"wrote {path}", file=sys.stderr)
    if args.format == "table":
        print(format_eval_table(result))
    else:
        from .suite import _finite

        print(json.dumps(_finite(result), indent=2))
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    output = args.output or (os.path.join(args.runs[0], "report") if len(args.runs) == 1 else "report")
    path = build_report(args.runs, output, title=args.title)
    print(path)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_rows, format_compare

    rows = compare_rows(args.runs)
    print(json.dumps(rows, indent=2) if args.json else format_compare(rows))
    return 0
