"""Bradley-Terry reward models: train one on preference pairs, then use it as a judge or as the
source of MADPO margins.

Loss (Bradley-Terry, optional margin as in Llama 2, Touvron et al. 2023, arXiv 2307.09288, Eq. 2)::

    L = -log sig( r(x, y_w) - r(x, y_l) - m )      m = the pair's margin column (0 without one)

``r`` is the first output of an ``AutoModelForSequenceClassification`` (a causal-LM checkpoint gets
a fresh score head) on prompt + response. The saved directory (safetensors + tokenizer) loads as
``online.judge: {kind: reward_model, path: ...}`` and as ``dpokit rm-margin --rm ...``, which writes
``rm_margin = r(x, y_w) - r(x, y_l)`` into a pairs file for the ``madpo`` modifier.

Other kinds (``--kind gpm``: general preference model; ``--kind multi``: one head per objective) and
``dpokit eval-rm`` live in :mod:`.rm_kinds` and :mod:`.rm_train`.

Commands: ``dpokit train-rm``, ``dpokit eval-rm`` and ``dpokit rm-margin`` (registered from here).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.formats import PreferencePair, iter_records, parse_pair
from .judges import RewardModelJudge, reward_model_scores
from .rm_kinds import bradley_terry_loss  # noqa: F401  (re-exported)

logger = logging.getLogger("dpokit")


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
    from .rm_kinds import KINDS
    from .rm_train import fit

    return fit(KINDS["bt"], model, tokenizer, pairs, epochs, lr, batch_size, max_length, margin_column,
               weight_decay, max_grad_norm, seed, log_every, log)


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
def cmd_rm_margin(args) -> int:
    judge = RewardModelJudge.from_pretrained(args.rm, trust_remote_code=args.trust_remote_code,
                                             batch_size=args.batch_size, max_length=args.max_length)
    print(json.dumps(write_rm_margins(judge, args.data, args.output, args.column), indent=2))
    return 0


def register(sub) -> None:
    from .rm_train import add_eval_parser, add_train_arguments, cmd_train_rm

    p = sub.add_parser("train-rm", help="train a reward model (Bradley-Terry, GPM or multi-objective)")
    p.add_argument("--model", required=True, help="sequence-classification or causal-LM checkpoint (dir or hub id)")
    p.add_argument("--data", required=True, help="pairs (JSONL/JSON/Parquet/CSV or hub id); --kind multi: "
                   "rows of prompt, response and scores_<name> columns")
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
    add_train_arguments(p)
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

    add_eval_parser(sub)
