"""`dpokit` command line: train | demo | losses | bench, plus the subcommands in COMMAND_MODULES
(eval, report, compare: dpokit.eval.cli; sweep: dpokit.tasks.sweep)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

DEMO_OUTPUT_DIR = "runs/demo"  # each demo writes to its own directory when this default is left


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def cmd_train(args) -> int:
    from .errors import CheckpointError, NonFiniteError
    from .online.data_loops import data_loop
    from .online.loop import run_online
    from .preflight import checked_config
    from .train import Trainer

    if args.from_trl:  # a `trl dpo --config FILE` YAML, translated (dpokit.from_trl)
        from .from_trl import load_trl_config

        config = load_trl_config(args.from_trl, args.set or [])
    else:
        config = checked_config(args.config, args.set or [])  # every check, before any model loads
    online = bool(config.online.strategy)  # generate -> judge -> train rounds (dpokit.online.loop)
    loop = data_loop(config)  # data.kind expert: the Diffusion-DRO loop (dpokit.online.data_loops)
    try:
        if loop is not None:
            result = loop.run(config, resume=args.resume)
        else:
            result = run_online(config, resume=args.resume) if online else Trainer(config).fit(resume=args.resume)
    except (NonFiniteError, CheckpointError) as err:  # the run stopped with an explanation (and a checkpoint)
        print(f"dpokit: error: {err}", file=sys.stderr)
        return 3
    from .distributed import end_process_group, is_main_process

    if is_main_process():  # one line per run, not one per process
        print(json.dumps({"output_dir": config.train.output_dir, **result}))
    end_process_group()
    return 0 if result["status"] == "completed" else 130


def cmd_demo(args) -> int:
    from .config import set_by_path
    from .tasks.demos import run_demo_command

    hparams = {}
    for item in args.hparam or []:
        set_by_path(hparams, item)
    return run_demo_command(args, hparams, default_output_dir=DEMO_OUTPUT_DIR)


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


def cmd_bench(args) -> int:
    from . import bench

    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Preference optimization for causal LMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("config", nargs="?", help="path to a YAML config (see examples/)")
    source.add_argument("--from-trl", metavar="FILE", help="train from the YAML of `trl dpo --config FILE` "
                        "(see docs/migrating-from-trl.md)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-6")
    p.add_argument("--resume", action="store_true", help="continue from the latest valid checkpoint in output_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="run the built-in alignment experiment (no downloads, a few minutes on CPU)")
    p.add_argument("--loss", default="dpo", help="any registered pairwise loss (see `dpokit losses`); with --modality "
                   "diffusion also listwise ones (diffusion_rankdpo, phygdpo, ...) and diffusion_dro")
    p.add_argument("--hparam", action="append", metavar="KEY=VALUE", help="loss hyperparameter, e.g. beta=0.2")
    p.add_argument("--output-dir", default=DEMO_OUTPUT_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller experiment (for smoke tests)")
    p.add_argument("--task", default="parity", choices=("parity", "graded", "arithmetic"),
                   help="parity: binary reward; graded: five reward levels (dpokit.tasks.graded); arithmetic: "
                   "multi-step solutions with checkable steps (dpokit.tasks.arithmetic_demo)")
    p.add_argument("--method", default="step_dpo", choices=("step_dpo", "dpo"),
                   help="with --task arithmetic: step-level pairs (step_dpo) or outcome-level pairs (dpo)")
    p.add_argument("--pairs", default="verifier", choices=("verifier", "search"),
                   help="with --task arithmetic --method step_dpo: step pairs from the verifier or from MCTS-DPO search")
    p.add_argument("--label-noise", type=float, default=0.0, metavar="FRACTION",
                   help="flip this fraction of the training pairs (data.label_noise)")
    p.add_argument("--online", action="store_true", help="online rounds: sample, judge, train, repeat")
    p.add_argument("--strategy", default="online_dpo", help="round strategy with --online (online_dpo, "
                   "iterative_dpo, dno, sppo, apo, xpo, hypo, ofs_dpo; "
                   "group strategies: grpo, copo, rloo, reinforce)")
    p.add_argument("--rounds", type=int, default=4, help="number of rounds with --online")
    p.add_argument("--modality", choices=("text", "diffusion", "vlm"), default="text",
                   help="text: the parity task on a tiny Llama; diffusion: Diffusion-DPO on 8x8 bimodal images; "
                        "vlm: DPO on a tiny Llava, the colour of a square in an image")
    p.add_argument("--prefer", choices=("A", "B"), default="A",
                   help="with --modality diffusion: the preferred image mode (A: red left, B: blue right)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("losses", help="list the registered objectives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_losses)

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
    "dpokit.eval.cli",
    "dpokit.tasks.sweep",  # sweep
    "dpokit.preference.reward_model",  # train-rm, rm-margin
    "dpokit.preference.directional",  # generate
    "dpokit.eval.audit",  # audit
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    from .errors import ConfigError, DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dpokit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
