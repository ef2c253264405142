"""``dpokit eval``, ``dpokit report`` and ``dpokit compare`` (registered through ``COMMAND_MODULES``)."""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

import yaml


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
    p.add_argument("--loss", default=None, help="report this loss on the pairs (default: the run's loss, with its "
                                                "hyperparameters and modifiers, when --model is a run or checkpoint)")
    p.add_argument("--beta", type=float, default=None, help="implicit-reward scale, and the loss's beta when it has one "
                                                            "(default: the loss's or the run's, else 0.1)")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                   help="loss hyperparameter (value read as YAML), e.g. eps=0.2 or modifiers.ld_alpha=0.5; repeatable; "
                        "applied on top of the run's loss section or --loss")
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
    from .generalization import add_arguments as add_generalization_arguments

    add_generalization_arguments(p)  # --explicit-rm, --shift-data
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
    p.add_argument("--model-kind", choices=("causal_lm", "vlm"), default=None,
                   help="how to load --model and read --data (default: the run's model.kind, else causal_lm); "
                        "vlm: image-text records (docs/vlm.md) scored with the model's processor")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("report", help="self-contained HTML report of one or more runs (curves, frontier, samples), "
                                                "or of a `dpokit sweep` directory")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", default=None, help="output directory (default: RUN_DIR/report for one run, "
                                                  "./report for several); holds index.html and the PNGs")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("compare", help="final metrics of several runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


class EvalArgumentError(ValueError):
    """A ``dpokit eval`` argument that cannot work; printed as one line, exit code 2."""


def eval_loss_section(run_loss: Optional[Dict[str, Any]], loss: Optional[str],
                      hparams: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """The loss section ``dpokit eval`` reports: the run's ``loss`` section (name or components,
    hyperparameters, modifiers) when there is one, or ``{name: loss}``; ``loss`` naming another loss
    than the run's starts from that loss's defaults. ``hparams`` (``KEY=VALUE``, value read as YAML,
    dotted keys for nested values such as ``modifiers.ld_alpha``) apply on top. None: no loss."""
    from ..config import ConfigError, set_by_path

    run_loss = copy.deepcopy(run_loss) if isinstance(run_loss, dict) else {}
    if loss is not None:
        section = run_loss if run_loss.get("name") == loss else {"name": loss}
    elif run_loss:
        section = run_loss
    elif hparams:
        raise EvalArgumentError("--hparam sets a hyperparameter of the reported loss: give --loss NAME "
                                "(or a run directory as --model, whose loss it then changes)")
    else:
        return None
    for item in hparams:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            raise EvalArgumentError(f"--hparam expects KEY=VALUE (e.g. eps=0.2), got {item!r}")
        try:
            set_by_path(section, item)
        except (ConfigError, yaml.YAMLError) as err:
            raise EvalArgumentError(f"--hparam {item}: {str(err).splitlines()[0]}") from None
    return section


def _accepts(loss, key: str) -> bool:
    """Whether a built loss (plain, with modifiers, or a weighted sum) has hyperparameter ``key``."""
    if hasattr(loss, "base"):
        return _accepts(loss.base, key)
    if hasattr(loss, "components"):
        return any(_accepts(component, key) for _, component in loss.components)
    return key in getattr(loss, "hparams", {})


def loss_beta(loss) -> Optional[float]:
    """The ``beta`` of a built loss (the first component's that has one), else None."""
    if hasattr(loss, "base"):
        return loss_beta(loss.base)
    if hasattr(loss, "components"):
        return next((b for b in (loss_beta(c) for _, c in loss.components) if b is not None), None)
    value = getattr(loss, "hparams", {}).get("beta")
    return float(value) if value is not None else None


def build_eval_loss(section: Dict[str, Any], beta: Optional[float] = None, explicit_beta: bool = False):
    """``(loss, section)``: the loss of ``section`` built and range-checked as ``dpokit train`` does;
    ``beta`` (``--beta``) becomes its ``beta`` when the loss has one and ``section`` sets none
    explicitly (``explicit_beta``: a ``--hparam beta=...``). Bad names or values raise
    :class:`EvalArgumentError` naming them."""
    from ..losses import build_loss
    from ..losses.checks import check_loss

    def build(candidate):
        try:
            loss = build_loss(candidate)
            check_loss(loss)
        except (KeyError, ValueError, TypeError) as err:
            raise EvalArgumentError(f"loss: {err.args[0] if err.args else err}") from None
        return loss

    loss = build(section)
    if beta is not None and not explicit_beta and _accepts(loss, "beta"):
        section = {**section, "beta": beta}
        loss = build(section)
    return loss, section


def _pairwise_problem(loss, reference: bool) -> Optional[str]:
    """Why ``loss`` cannot be computed on held-out pairs (None when it can)."""
    if loss.needs.data != "pairs":
        return (f"loss {loss.name!r} trains on {loss.needs.data}; dpokit eval reports losses on preference pairs")
    if loss.needs.reference and not reference:
        return f"loss {loss.name!r} needs a reference model (give --ref PATH)"
    return None


def cmd_eval(args) -> int:
    try:
        return _cmd_eval(args)
    except EvalArgumentError as err:
        print(f"dpokit eval: error: {err}", file=sys.stderr)
        return 2


def _cmd_eval(args) -> int:
    from ..families import model_family
    from ..models import load_causal_lm
    from ..config import ModelConfig
    from .runs import default_reference, load_model_for_eval, model_kind, resolve_model_path
    from .suite import EvalSettings, evaluate_checkpoint, format_eval_table, load_prompts, prompts_from_texts, write_eval

    if not args.data and not (args.prompts and args.generate):
        print("dpokit eval: error: give --data (held-out pairs) and/or --prompts with --generate N", file=sys.stderr)
        return 2
    kind, _, run_config = resolve_model_path(args.model)
    run_config = (run_config or {}) if kind in ("run", "checkpoint") else {}
    kind_of_model = model_kind(run_config, getattr(args, "model_kind", None))
    family = model_family(kind_of_model)
    if not hasattr(family, "eval_engine"):  # e.g. diffusion: its held-out metrics are logged while training
        raise EvalArgumentError(f"model.kind {kind_of_model}: dpokit eval scores language and vision-language "
                                "models; a diffusion run's held-out metrics are the eval/* rows of its "
                                "metrics.jsonl, and `dpokit report RUN_DIR` shows them with its sample grids")
    if not family.text_diagnostics and (args.prompts or args.explicit_rm or args.reward_model):
        raise EvalArgumentError(f"model.kind {kind_of_model}: --prompts, --explicit-rm and --reward-model read text "
                                "prompts only; give --data (image-text pairs)")
    ref_path = args.ref
    if ref_path is None and kind in ("run", "checkpoint"):
        ref_path = default_reference(run_config)
    if ref_path == "none":
        ref_path = None
    from .generalization import check_args, format_generalization, from_args

    try:
        check_args(args, ref_path is not None)
    except ValueError as err:
        raise EvalArgumentError(str(err)) from None
    # the loss is resolved (and its errors reported) before any model is loaded
    explicit = bool(args.loss or args.hparam)
    section = eval_loss_section(run_config.get("loss"), args.loss, args.hparam)
    loss_fn, skipped_loss = None, None
    if section is not None:
        explicit_beta = any(item.split("=", 1)[0].strip() == "beta" for item in args.hparam)
        loss_fn, section = build_eval_loss(section, args.beta, explicit_beta)
        problem = _pairwise_problem(loss_fn, ref_path is not None)
        if problem and explicit:
            raise EvalArgumentError(problem)
        if problem:  # the run's own loss, not asked for: report the rest
            print(f"dpokit eval: the run's loss is not reported: {problem}", file=sys.stderr)
            loss_fn, section, skipped_loss = None, None, problem
    policy, tokenizer, info = load_model_for_eval(args.model, args.trust_remote_code, kind_of_model)
    reference = load_causal_lm(ref_path, ModelConfig(name_or_path=ref_path, trust_remote_code=args.trust_remote_code,
                                                     kind=kind_of_model)).eval() if ref_path else None
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy.to(device)
    if reference is not None:
        reference.to(device)
    beta = args.beta
    if beta is None and loss_fn is not None:
        beta = loss_beta(loss_fn)
    if beta is None:
        beta = (run_config.get("loss") or {}).get("beta")
    beta = float(beta) if beta is not None else 0.1
    pairs, dropped = [], 0
    if args.data:
        examples = family.read(args.data, "pairs", limit=args.limit)
        pairs, report = family.tokenize(examples, tokenizer, max_length=args.max_length)
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
    result, rows = evaluate_checkpoint(policy, reference, tokenizer, pairs, prompts, judge, loss_fn, settings, family)
    if args.reward_model:
        result["judge"] = f"reward_model:{args.reward_model}"
    if args.explicit_rm:
        try:
            result["reward_generalization"] = from_args(args, policy, reference, tokenizer, beta, str(device))
        except ValueError as err:
            raise EvalArgumentError(str(err)) from None
    if skipped_loss:
        result.setdefault("notes", []).append(f"the run's loss is not reported: {skipped_loss}")
    result.update(model=args.model, reference=ref_path, dropped_by_truncation=dropped, step=info.get("step"),
                  loss_name=_loss_label(section) if section else (run_config.get("loss") or {}).get("name"),
                  loss_config=section, model_kind=kind_of_model)
    if args.output:
        path = write_eval(result, rows, args.output)
        print(f"wrote {path}", file=sys.stderr)
    if args.format == "table":
        print(format_eval_table(result))
        if result.get("reward_generalization"):
            print("\n" + format_generalization(result["reward_generalization"]))
    else:
        from .suite import json_safe

        print(json.dumps(json_safe(result), indent=2))
    return 0


def _loss_label(section: Dict[str, Any]) -> str:
    if "name" in section:
        return str(section["name"])
    return " + ".join(str(c.get("name")) for c in section.get("components") or [])


def cmd_report(args) -> int:
    from .report import build_report
    from .sweep_report import build_sweep_report, is_sweep_dir

    if len(args.runs) == 1 and is_sweep_dir(args.runs[0]):  # a `dpokit sweep` directory
        print(build_sweep_report(args.runs[0], args.output or os.path.join(args.runs[0], "report"), title=args.title))
        return 0
    output = args.output or (os.path.join(args.runs[0], "report") if len(args.runs) == 1 else "report")
    path = build_report(args.runs, output, title=args.title)
    print(path)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_rows, format_compare

    rows = compare_rows(args.runs)
    print(json.dumps(rows, indent=2) if args.json else format_compare(rows))
    return 0
