"""`dpokit` command line: train | demo | eval | losses | bench, plus the subcommands in COMMAND_MODULES."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def cmd_train(args) -> int:
    from .config import load_config
    from .train import Trainer

    config = load_config(args.config, args.set or [])
    result = Trainer(config).fit(resume=args.resume)
    print(json.dumps({"output_dir": config.train.output_dir, **result}))
    return 0 if result["status"] == "completed" else 130


def cmd_demo(args) -> int:
    from .tasks.demo import DemoSettings, run_demo

    hparams = {}
    for item in args.hparam or []:
        from .config import set_by_path

        set_by_path(hparams, item)
    settings = DemoSettings(output_dir=args.output_dir, loss=args.loss, loss_hparams=hparams, seed=args.seed)
    if args.quick:
        settings.n_train_prompts, settings.n_eval_prompts = 200, 60
        settings.warmup_steps, settings.dpo_epochs = 120, 2
    run_demo(settings)
    return 0


def cmd_losses(args) -> int:
    from .losses import list_losses

    specs = list_losses()
    if args.json:
        print(json.dumps([s.as_dict() for s in specs], indent=2))
        return 0
    print(f"{'name':<20}{'family':<16}{'reference':<10}{'data':<10}{'per-token':<24}source")
    for s in specs:
        n = s.needs
        token = ",".join(n.token_stats) if n.token_stats else ("log-probs" if n.token_logps else "-")
        name = s.name + (f" ({', '.join(s.aliases)})" if s.aliases else "")
        flag = "" if s.verified == "verified" else f" [{s.verified}]"
        print(f"{name:<20}{s.family:<16}{'yes' if n.reference else 'no':<10}{n.data:<10}{token:<24}{s.source}{flag}")
    return 0


def cmd_eval(args) -> int:
    from .config import ModelConfig, build_loss
    from .data import load_examples, tokenize_examples
    from .eval.preference import evaluate_pairs
    from .models import load_causal_lm, load_tokenizer
    from .reference import ModelReference

    model_cfg = ModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    policy = load_causal_lm(args.model, model_cfg).eval()
    reference = ModelReference(load_causal_lm(args.ref, model_cfg)) if args.ref else None
    loss_fn = None
    if args.loss:
        section = {"name": args.loss}
        if args.beta is not None:
            section["beta"] = args.beta
        loss_fn = build_loss(section)
    examples = load_examples(args.data, "pairs", limit=args.limit)
    tokenized, report = tokenize_examples(examples, tokenizer, max_length=args.max_length)
    beta = args.beta if args.beta is not None else (loss_fn.hparams.get("beta", 0.1) if hasattr(loss_fn, "hparams") else 0.1)
    result = evaluate_pairs(policy, reference, tokenized, tokenizer.pad_token_id, loss_fn, beta, args.batch_size)
    result["reference"] = args.ref
    result["dropped_by_truncation"] = len(report.dropped)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Preference optimization for causal LMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="path to a YAML config (see examples/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-6")
    p.add_argument("--resume", action="store_true", help="continue from the latest valid checkpoint in output_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="run the built-in alignment experiment (no downloads, a few minutes on CPU)")
    p.add_argument("--loss", default="dpo", help="any registered pairwise loss (see `dpokit losses`)")
    p.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="loss hyperparameter, e.g. beta=0.2")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller experiment (for smoke tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("losses", help="list the registered objectives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_losses)

    p = sub.add_parser("eval", help="implicit-reward evaluation of a model on preference pairs")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--ref", default=None, help="reference model (omit for reference-free implicit rewards)")
    p.add_argument("--loss", default=None, help="also report this loss on the pairs")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="training-step benchmark (pairs/s, tokens/s, memory, FLOP/s)")
    try:
        from . import bench

        bench.add_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=cmd_bench)

    # Further subcommands live next to their code: each module has `register(subparsers)`, which adds
    # its parser(s) and sets `func` to a callable taking the parsed args and returning an exit code.
    import importlib

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


COMMAND_MODULES: List[str] = [
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    from .config import ConfigError
    from .data.formats import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dpokit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
