"""Training, saving, loading and evaluating reward models of every kind (:mod:`.rm_kinds`).

Commands (registered through :func:`dpokit.preference.reward_model.register`):

* ``dpokit train-rm --kind bt|gpm|multi``: train and save (safetensors + tokenizer + the kind in
  ``config.json``);
* ``dpokit eval-rm --model DIR --data PAIRS``: accuracy, Brier score and ECE of ``P(chosen > rejected)``
  on a pairs file, for any kind, so kinds compare on the same pairs;
* ``--context-column`` (both commands): a context-aware reward model (:mod:`.context`).
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Dict, List, Optional, Sequence

import torch

from .context import context_sensitivity, load_context_pairs
from .judges import load_reward_model
from .rm_kinds import KINDS, RewardModelKind, kind_of, pair_metrics

logger = logging.getLogger("dpokit")


def prepare(model, tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def fit(kind: RewardModelKind, model, tokenizer, rows: Sequence[Any], epochs: int = 1, lr: float = 1e-5,
        batch_size: int = 8, max_length: int = 512, margin_column: Optional[str] = None,
        weight_decay: float = 0.0, max_grad_norm: float = 1.0, seed: int = 0, log_every: int = 10,
        log=logger.info) -> List[Dict[str, float]]:
    """Train ``model`` in place with ``kind``'s loss (AdamW, shuffled batches); the logged records."""
    prepare(model, tokenizer)
    if margin_column:
        missing = [p.location for p in rows if margin_column not in p.extras]
        if missing:
            raise ValueError(f"margin column {margin_column!r} is missing in {missing[0]}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    records: List[Dict[str, float]] = []
    step = 0
    model.train()
    for epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            loss, accuracy = kind.batch_loss(model, tokenizer, batch, max_length, margin_column)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": accuracy}
            records.append(record)
            if log_every and step % log_every == 0:
                log(f"reward model ({kind.name}) step {step}: loss {record['loss']:.4f} "
                    f"accuracy {record['accuracy']:.3f}")
    model.eval()
    return records


def new_model(path: str, kind: RewardModelKind, settings: Dict[str, Any], trust_remote_code: bool = False,
              dtype: str = "auto"):
    """A checkpoint with a fresh head of the kind's size when its own differs; the kind in its config."""
    model, tokenizer = load_reward_model(path, trust_remote_code=trust_remote_code, dtype=dtype,
                                         num_labels=kind.num_labels(settings), ignore_mismatched_sizes=True)
    model.config.dpokit_reward_model = {"kind": kind.name, **settings}
    prepare(model, tokenizer)
    return model, tokenizer


def save(model, tokenizer, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def load(path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer, kind)`` of a saved reward model of any kind."""
    model, tokenizer = load_reward_model(path, trust_remote_code=trust_remote_code, dtype=dtype, num_labels=None)
    prepare(model, tokenizer)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer, kind_of(model)


@torch.no_grad()
def evaluate(model, tokenizer, pairs: Sequence[Any], batch_size: int = 16, max_length: int = 512,
             direction: Optional[Sequence[float]] = None, kind: Optional[RewardModelKind] = None) -> Dict[str, Any]:
    """:func:`pair_metrics` of the model's ``P(chosen > rejected)`` on ``pairs``, plus its kind."""
    kind = kind or kind_of(model)
    was_training = model.training
    model.eval()
    p = kind.pair_probabilities(model, tokenizer, pairs, batch_size, max_length, direction)
    model.train(was_training)
    return {"kind": kind.name, **pair_metrics(p.tolist())}


def split(rows: List[Any], fraction: float, seed: int):
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    return [rows[i] for i in sorted(order[n_eval:])], [rows[i] for i in sorted(order[:n_eval])]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def cmd_train_rm(args) -> int:
    from ..data.formats import load_examples

    torch.manual_seed(args.seed)
    kind = KINDS[args.kind]
    column = getattr(args, "context_column", None)
    if column and kind.data != "pairs":
        raise ValueError(f"--context-column: a {args.kind} model trains on scored responses, not pairs")
    rows = load_context_pairs(args.data, column, limit=args.limit) if column else kind.load(args.data, limit=args.limit)
    eval_pairs: List[Any] = []
    if args.eval_data:
        eval_pairs = load_context_pairs(args.eval_data, column) if column else load_examples(args.eval_data, "pairs")
    elif args.eval_fraction > 0 and kind.data == "pairs":
        rows, eval_pairs = split(rows, args.eval_fraction, args.seed)
    elif args.eval_fraction > 0:
        raise ValueError(f"--eval-fraction: a {args.kind} model trains on scored responses, not pairs; "
                         "give --eval-data PAIRS to evaluate it")
    settings = kind.settings(args, rows)
    model, tokenizer = new_model(args.model, kind, settings, args.trust_remote_code, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    evaluate_args = (args.batch_size, args.max_length, args.direction)
    before = evaluate(model, tokenizer, eval_pairs, *evaluate_args) if eval_pairs else None
    records = fit(kind, model, tokenizer, rows, args.epochs, args.lr, args.batch_size, args.max_length,
                  args.margin_column, args.weight_decay, seed=args.seed, log=print)
    save(model, tokenizer, args.output_dir)
    summary = {"output_dir": args.output_dir, "kind": kind.name, "settings": settings, "train_rows": len(rows),
               "steps": len(records), "final_loss": records[-1]["loss"] if records else None}
    if eval_pairs:
        summary["eval_before"] = before
        summary["eval_after"] = evaluate(model, tokenizer, eval_pairs, *evaluate_args)
    with open(os.path.join(args.output_dir, "metrics.jsonl"), "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    with open(os.path.join(args.output_dir, "rm_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_rm(args) -> int:
    from ..data.formats import load_examples

    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model}: not a reward-model directory")
    model, tokenizer, kind = load(args.model, args.trust_remote_code)
    if args.reversed_context_column and not args.context_column:
        raise ValueError("--reversed-context-column needs --context-column")
    flipped = None
    if args.context_column and args.reversed_context_column:
        pairs, flipped = load_context_pairs(args.data, args.context_column, args.reversed_context_column, args.limit)
    elif args.context_column:
        pairs = load_context_pairs(args.data, args.context_column, limit=args.limit)
    else:
        pairs = load_examples(args.data, "pairs", limit=args.limit)
    result = evaluate(model, tokenizer, pairs, args.batch_size, args.max_length, args.direction, kind)
    if flipped is not None:
        p = kind.pair_probabilities(model, tokenizer, pairs, args.batch_size, args.max_length, args.direction)
        q = kind.pair_probabilities(model, tokenizer, flipped, args.batch_size, args.max_length, args.direction)
        result["context_sensitivity"] = context_sensitivity(p.tolist(), q.tolist())
    print(json.dumps({"model": args.model, "data": str(args.data), **result}, indent=2))
    return 0


def _direction(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--direction {text!r}: expected comma-separated numbers, e.g. 0.8,0.6") from None


def add_train_arguments(p) -> None:
    p.add_argument("--kind", default="bt", choices=sorted(KINDS),
                   help="bt: Bradley-Terry; gpm: general preference model (preference embeddings); "
                   "multi: one head per scores_<name> column")
    p.add_argument("--gpm-dim", type=int, default=2, help="gpm: embedding dimension 2k (even)")
    p.add_argument("--gpm-prompt-head", action="store_true", help="gpm: prompt-dependent eigenvalue gate")
    p.add_argument("--gpm-tau", type=float, default=0.1, help="gpm: temperature of P = sig(s / tau)")
    p.add_argument("--gpm-normalize", action="store_true", help="gpm: L2-normalize the embeddings (as the released "
                   "inference code; the training code does not)")
    p.add_argument("--direction", type=_direction, default=None,
                   help="multi: unit direction v (comma-separated) for evaluating on pairs (default: equal weights)")
    p.add_argument("--context-column", default=None, help="a text column: the context z rendered before each "
                   "prompt (a context-aware reward model)")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval-rm", help="accuracy and calibration (ECE, Brier) of a reward model on pairs")
    p.add_argument("--model", required=True, help="a directory saved by `dpokit train-rm` (any --kind)")
    p.add_argument("--data", required=True, help="pairs (JSONL/JSON/Parquet/CSV or hub id)")
    p.add_argument("--direction", type=_direction, default=None,
                   help="multi-objective models: the direction v (comma-separated; default equal weights)")
    p.add_argument("--context-column", default=None, help="a text column rendered before each prompt")
    p.add_argument("--reversed-context-column", default=None, help="a text column under which each pair's label "
                   "is reversed: adds context_sensitivity (accuracy under both contexts)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_eval_rm)
