"""Bradley-Terry reward models: train one on preference pairs, then use it as a judge or as the
source of MADPO margins.

Loss (Bradley-Terry, optional margin as in Llama 2, Touvron et al. 2023, arXiv 2307.09288, Eq. 2)::

    L = -log sig( r(x, y_w) - r(x, y_l) - m )      m = the pair's margin column (0 without one)

``r`` is the first output of an ``AutoModelForSequenceClassification`` (a causal-LM checkpoint gets
a fresh score head) on prompt + response. The saved directory (safetensors + tokenizer) loads as
``online.judge: {kind: reward_model, path: ...}`` and as ``dpokit rm-margin --rm ...``, which writes
``rm_margin = r(x, y_w) - r(x, y_l)`` into a pairs file for the ``madpo`` modifier.

Commands: ``dpokit train-rm`` and ``dpokit rm-margin`` (registered from here).
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.formats import PreferencePair, iter_records, load_examples, parse_pair
from .judges import RewardModelJudge, load_reward_model, reward_model_scores

logger = logging.getLogger("dpokit")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: Optional[torch.Tensor] = None):
    """Per-pair ``-logsig(r_w - r_l - m)``."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return -F.logsigmoid(diff)


@torch.no_grad()
def pair_accuracy(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16,
                  max_length: int = 512) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    prompts = [p.prompt for p in pairs]
    chosen = reward_model_scores(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length)
    rejected = reward_model_scores(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length)
    model.train(was_training)
    diff = chosen - rejected
    return {"accuracy": float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean()),
            "margin_mean": float(diff.mean()), "loss": float(bradley_terry_loss(chosen, rejected).mean()),
            "num_pairs": len(pairs)}


def train_reward_model(model, tokenizer, pairs: Sequence[PreferencePair], epochs: int = 1, lr: float = 1e-5,
                       batch_size: int = 8, max_length: int = 512, margin_column: Optional[str] = None,
                       weight_decay: float = 0.0, max_grad_norm: float = 1.0, seed: int = 0,
                       log_every: int = 10, log=logger.info) -> List[Dict[str, float]]:
    """Train ``model`` in place with the Bradley-Terry loss; returns the logged records."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if margin_column:
        missing = [p.location for p in pairs if margin_column not in p.extras]
        if missing:
            raise ValueError(f"margin column {margin_column!r} is missing in {missing[0]}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    records: List[Dict[str, float]] = []
    step = 0
    model.train()
    for epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [pairs[i] for i in order[start:start + batch_size]]
            prompts = [p.prompt for p in batch]
            scores = reward_model_scores(model, tokenizer, prompts + prompts, [p.chosen for p in batch]
                                         + [p.rejected for p in batch], len(batch) * 2, max_length, grad=True)
            chosen, rejected = scores[:len(batch)], scores[len(batch):]
            margin = (torch.tensor([p.extras[margin_column] for p in batch], device=scores.device)
                      if margin_column else None)
            loss = bradley_terry_loss(chosen, rejected, margin).mean()
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss.item(),
                      "accuracy": float((chosen > rejected).float().mean())}
            records.append(record)
            if log_every and step % log_every == 0:
                log(f"reward model step {step}: loss {record['loss']:.4f} accuracy {record['accuracy']:.3f}")
    model.eval()
    return records


def save_reward_model(model, tokenizer, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def write_rm_margins(judge: RewardModelJudge, source: Any, output: str, column: str = "rm_margin") -> Dict[str, Any]:
    """Copy every record of a pairs file to ``output`` (JSONL) with ``column = r(y_w) - r(y_l)``."""
    records, pairs = [], []
    for location, record in iter_records(source):
        pairs.append(parse_pair(location, record))
        records.append(record)
    prompts = [p.prompt for p in pairs]
    chosen = judge.score(prompts, [p.chosen for p in pairs])
    rejected = judge.score(prompts, [p.rejected for p in pairs])
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as handle:
        for record, a, b in zip(records, chosen, rejected):
            handle.write(json.dumps({**record, column: a - b}) + "\n")
    os.replace(tmp, output)
    margins = [a - b for a, b in zip(chosen, rejected)]
    return {"output": output, "column": column, "num_pairs": len(margins),
            "margin_mean": sum(margins) / max(len(margins), 1),
            "accuracy": sum(m > 0 for m in margins) / max(len(margins), 1)}


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def cmd_train_rm(args) -> int:
    torch.manual_seed(args.seed)
    pairs = load_examples(args.data, "pairs", limit=args.limit)
    eval_pairs: List[PreferencePair] = []
    if args.eval_data:
        eval_pairs = load_examples(args.eval_data, "pairs")
    elif args.eval_fraction > 0:
        rng = random.Random(args.seed)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_eval = max(1, int(len(pairs) * args.eval_fraction))
        eval_pairs = [pairs[i] for i in sorted(order[:n_eval])]
        pairs = [pairs[i] for i in sorted(order[n_eval:])]
    model, tokenizer = load_reward_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    before = pair_accuracy(model, tokenizer, eval_pairs, args.batch_size, args.max_length) if eval_pairs else None
    records = train_reward_model(model, tokenizer, pairs, args.epochs, args.lr, args.batch_size, args.max_length,
                                 args.margin_column, args.weight_decay, seed=args.seed, log=print)
    save_reward_model(model, tokenizer, args.output_dir)
    summary = {"output_dir": args.output_dir, "train_pairs": len(pairs), "steps": len(records),
               "final_loss": records[-1]["loss"] if records else None}
    if eval_pairs:
        summary["eval_before"] = before
        summary["eval_after"] = pair_accuracy(model, tokenizer, eval_pairs, args.batch_size, args.max_length)
    with open(os.path.join(args.output_dir, "metrics.jsonl"), "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    with open(os.path.join(args.output_dir, "rm_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_rm_margin(args) -> int:
    judge = RewardModelJudge.from_pretrained(args.rm, trust_remote_code=args.trust_remote_code,
                                             batch_size=args.batch_size, max_length=args.max_length)
    print(json.dumps(write_rm_margins(judge, args.data, args.output, args.column), indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-rm", help="train a Bradley-Terry reward model on preference pairs")
    p.add_argument("--model", required=True, help="sequence-classification or causal-LM checkpoint (dir or hub id)")
    p.add_argument("--data", required=True, help="pairs (JSONL/JSON/Parquet/CSV or hub id)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--margin-column", default=None, help="numeric column m: loss -logsig(r_w - r_l - m)")
    p.add_argument("--eval-data", default=None)
    p.add_argument("--eval-fraction", type=float, default=0.0, help="held out from --data when no --eval-data")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_train_rm)

    p = sub.add_parser("rm-margin", help="write reward-model margins (rm_margin) into a pairs file (for madpo)")
    p.add_argument("--rm", required=True, help="a reward model directory (e.g. from train-rm)")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument("--column", default="rm_margin")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_rm_margin)
