"""Implicit vs explicit reward generalization (Lin et al., EMNLP 2024, arXiv 2409.03650).

A DPO policy defines an implicit reward ``r_theta(x, y) = beta * log pi_theta(y|x) / pi_ref(y|x)``; an
explicit reward model (a Bradley-Terry model with a scalar head, e.g. from ``dpokit train-rm``) gives
``r_phi(x, y)``. Both are judged by pairwise accuracy ``1[r(x, y_w) > r(x, y_l)]`` (a tie counts 1/2)
on the in-distribution held-out pairs and on distribution-shifted sets (other prompts, other
responses); the drop from in-distribution is reported for each. Lin et al. find the implicit reward
generalizes worse (about 3 points lower on average, up to 7, under shift).

``dpokit eval --model RUN --data HELDOUT --explicit-rm RM --shift-data NAME=PATH`` adds the table as
``reward_generalization`` to its output; :func:`reward_generalization` is the function behind it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from .audit_features import wilson


def _accuracy(margins: Sequence[float]) -> Tuple[float, List[float]]:
    n = len(margins)
    right = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return right / n, wilson(right, n)


def implicit_margins(policy, reference, tokenizer, pairs: Sequence, beta: float, max_length: int = 512,
                     batch_size: int = 16) -> List[float]:
    """``beta * (log-ratio(y_w) - log-ratio(y_l))`` per pair (:class:`~dpokit.data.PreferencePair`)."""
    from ..data import tokenize_examples
    from ..reference import ModelReference
    from .preference import evaluate_pairs

    examples, report = tokenize_examples(list(pairs), tokenizer, max_length=max_length)
    if report.dropped:
        raise ValueError(f"{len(report.dropped)} pairs do not fit max_length {max_length} (first: "
                         f"{report.dropped[0]}); raise --max-length")
    ref = ModelReference(reference) if isinstance(reference, torch.nn.Module) else reference
    out = evaluate_pairs(policy, ref, examples, tokenizer.pad_token_id, beta=beta, batch_size=batch_size,
                         return_margins=True)
    return out["margins"].tolist()


def explicit_margins(judge, pairs: Sequence) -> List[float]:
    """``r(x, y_w) - r(x, y_l)`` per pair from a pointwise judge (e.g. a :class:`RewardModelJudge`)."""
    prompts = [p.prompt for p in pairs]
    chosen = judge.score(prompts, [p.chosen for p in pairs])
    rejected = judge.score(prompts, [p.rejected for p in pairs])
    return [a - b for a, b in zip(chosen, rejected)]


def reward_generalization(policy, reference, tokenizer, judge, splits: Dict[str, Sequence], beta: float = 0.1,
                          in_distribution: str = "in_distribution", max_length: int = 512,
                          batch_size: int = 16) -> Dict[str, Any]:
    """Pairwise accuracy of the implicit reward (``policy`` against ``reference``) and of the explicit
    reward model ``judge`` on every split (name -> pairs); ``drop``: in-distribution accuracy minus the
    split's (positive: worse under shift), and ``drop_difference`` = implicit drop - explicit drop."""
    if reference is None:
        raise ValueError("the implicit reward needs a reference model")
    if in_distribution not in splits:
        raise ValueError(f"no split named {in_distribution!r} (got {', '.join(splits)})")
    rows: Dict[str, Dict[str, Any]] = {}
    for name, pairs in splits.items():
        if not pairs:
            raise ValueError(f"split {name!r} has no pairs")
        imp, imp_ci = _accuracy(implicit_margins(policy, reference, tokenizer, pairs, beta, max_length, batch_size))
        exp, exp_ci = _accuracy(explicit_margins(judge, pairs))
        rows[name] = {"num_pairs": len(pairs), "implicit_accuracy": imp, "implicit_ci95": imp_ci,
                      "explicit_accuracy": exp, "explicit_ci95": exp_ci}
    base = rows[in_distribution]
    for name, row in rows.items():
        row["implicit_drop"] = base["implicit_accuracy"] - row["implicit_accuracy"]
        row["explicit_drop"] = base["explicit_accuracy"] - row["explicit_accuracy"]
        row["drop_difference"] = row["implicit_drop"] - row["explicit_drop"]
    return {"beta": beta, "in_distribution": in_distribution, "splits": rows}


def format_generalization(result: Dict[str, Any]) -> str:
    lines = [f"{'split':<22}{'pairs':>7}{'implicit (DPO)':>16}{'explicit RM':>13}{'implicit drop':>15}{'RM drop':>9}",
             "-" * 82]
    for name, row in result["splits"].items():
        lines.append(f"{name[:21]:<22}{row['num_pairs']:>7}{row['implicit_accuracy']:>16.3f}"
                     f"{row['explicit_accuracy']:>13.3f}{row['implicit_drop']:>15.3f}{row['explicit_drop']:>9.3f}")
    return "\n".join(lines)


# ---- `dpokit eval` options ------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--explicit-rm", default=None, metavar="PATH",
                   help="reward model to compare with the implicit reward on --data and every --shift-data set "
                        "(pairwise accuracy; Lin et al. 2024)")
    p.add_argument("--shift-data", action="append", default=[], metavar="[NAME=]PATH",
                   help="a distribution-shifted held-out pairs file for --explicit-rm; repeatable")


def check_args(args, has_reference: bool) -> None:
    """The option combinations that cannot work, raised as ``ValueError`` before any model loads."""
    if not args.explicit_rm:
        if args.shift_data:
            raise ValueError("--shift-data needs --explicit-rm PATH")
        return
    if not args.data:
        raise ValueError("--explicit-rm needs --data (the in-distribution held-out pairs)")
    if not has_reference:
        raise ValueError("--explicit-rm compares with the implicit reward, which needs a reference (--ref PATH)")


def from_args(args, policy, reference, tokenizer, beta: float, device: str):
    """The ``reward_generalization`` section of ``dpokit eval`` (None without ``--explicit-rm``)."""
    import os

    from ..data import load_examples
    from ..preference.judges import RewardModelJudge

    check_args(args, reference is not None)
    if not args.explicit_rm:
        return None
    splits = {"in_distribution": load_examples(args.data, "pairs", limit=args.limit)}
    for item in args.shift_data:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        name = name or os.path.splitext(os.path.basename(path))[0]
        if name in splits:
            raise ValueError(f"--shift-data: two sets named {name!r}; give NAME=PATH")
        splits[name] = load_examples(path, "pairs", limit=args.limit)
    judge = RewardModelJudge.from_pretrained(args.explicit_rm, args.trust_remote_code, device=device)
    return reward_generalization(policy, reference, tokenizer, judge, splits, beta, max_length=args.max_length,
                                 batch_size=args.batch_size)
