"""MAPL data construction: multi-level preference data for multi-instruction tasks (Sun et al., arXiv
2505.12845).

Only the paper's abstract was read. It builds two data sets from ordinary preference pairs:

* **intra-sample**: for a response ``y``, *prompt variants* with a known preference relation: the
  same response is better under one prompt than under another. Here a variant adds a checkable
  constraint to the prompt: ``x+`` adds one ``y`` satisfies, ``x-`` one it violates
  (:func:`intra_sample_variants`; records ``{response, prompt_chosen, prompt_rejected, ...}``);
* **inter-sample**: *multi-instruction* pairs composed from two original samples: the instruction
  ``x1 + x2``, chosen ``y_w1 + y_w2`` (both parts answered well), rejected with one part replaced by its
  rejected answer (:func:`inter_sample_pairs`; ordinary pairs with ``satisfied_chosen`` and
  ``satisfied_rejected`` counts).

The paper defines a training objective for each data set (for reward modelling and for DPO); those
objectives were not read and are **not** implemented. The inter-sample records are ordinary pairs that
any pairwise loss trains on; the intra-sample records (a response with two prompts) have no loss in
dpokit and are written for inspection or for an objective of your own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..errors import DataError


@dataclass(frozen=True)
class Constraint:
    """An instruction appended to a prompt and the check a response must pass to satisfy it."""

    name: str
    instruction: str
    check: Callable[[str], bool]


def max_words(k: int) -> Constraint:
    return Constraint(f"max_words_{k}", f"Answer in at most {k} words.", lambda y: len(y.split()) <= k)


def min_words(k: int) -> Constraint:
    return Constraint(f"min_words_{k}", f"Answer in at least {k} words.", lambda y: len(y.split()) >= k)


def uppercase() -> Constraint:
    return Constraint("uppercase", "Answer in capital letters only.",
                      lambda y: any(c.isalpha() for c in y) and y == y.upper())


def lowercase() -> Constraint:
    return Constraint("lowercase", "Answer in lower-case letters only.",
                      lambda y: any(c.isalpha() for c in y) and y == y.lower())


def contains(word: str) -> Constraint:
    return Constraint(f"contains_{word}", f"Use the word '{word}'.", lambda y: word.lower() in y.lower().split())


DEFAULT_CONSTRAINTS = (max_words(10), min_words(20), uppercase(), lowercase())


def _text(location: str, record: Dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(location, name, "is missing or not a non-empty text" if value is None or isinstance(value, str)
                        else f"expected text, got {type(value).__name__}", "MAPL construction reads text pairs")
    return value


def with_constraint(prompt: str, constraint: Constraint) -> str:
    return f"{prompt.rstrip()} {constraint.instruction}"


def intra_sample_variants(records: Sequence[Dict[str, Any]], constraints: Sequence[Constraint] = DEFAULT_CONSTRAINTS,
                          per_response: int = 2, seed: int = 0, locations: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """For the chosen and the rejected response of each pair (``prompt``, ``chosen``, ``rejected``):
    up to ``per_response`` records ``{response, prompt_chosen, prompt_rejected, constraint_chosen,
    constraint_rejected, source_index}`` where the response satisfies ``constraint_chosen`` (added to
    ``prompt_chosen``) and violates ``constraint_rejected``. Responses that satisfy all or none of the
    constraints give none."""
    rng = random.Random(seed)
    out = []
    for index, record in enumerate(records):
        location = locations[index] if index < len(locations) else f"record {index}"
        prompt = _text(location, record, "prompt")
        for side in ("chosen", "rejected"):
            response = _text(location, record, side)
            passed = [c for c in constraints if c.check(response)]
            failed = [c for c in constraints if not c.check(response)]
            combos = [(a, b) for a in passed for b in failed]
            rng.shuffle(combos)
            for good, bad in combos[:per_response]:
                out.append({"response": response, "prompt_chosen": with_constraint(prompt, good),
                            "prompt_rejected": with_constraint(prompt, bad), "constraint_chosen": good.name,
                            "constraint_rejected": bad.name, "source_index": index, "side": side})
    return out


def inter_sample_pairs(records: Sequence[Dict[str, Any]], pairs_per_record: int = 1, seed: int = 0,
                       joiner: str = "\n\n", locations: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Multi-instruction pairs from two original pairs ``i`` and ``j != i`` (drawn at random):
    prompt ``"1. x_i\\n2. x_j"``, chosen ``"1. y_w,i" + joiner + "2. y_w,j"``, rejected with one of the
    two parts (drawn at random) replaced by its rejected answer; ``satisfied_chosen`` = 2,
    ``satisfied_rejected`` = 1, ``source_indices`` = [i, j]. Needs at least two records."""
    if len(records) < 2:
        raise ValueError(f"inter-sample pairs compose two records; got {len(records)}")
    rng = random.Random(seed)
    texts = []
    for index, record in enumerate(records):
        location = locations[index] if index < len(locations) else f"record {index}"
        texts.append(tuple(_text(location, record, k).strip() for k in ("prompt", "chosen", "rejected")))
    out = []
    for i in range(len(texts)):
        for _ in range(pairs_per_record):
            j = rng.choice([k for k in range(len(texts)) if k != i])
            (x1, w1, l1), (x2, w2, l2) = texts[i], texts[j]
            replace_second = rng.random() < 0.5
            rejected = (w1, l2) if replace_second else (l1, w2)
            out.append({"prompt": f"1. {x1}\n2. {x2}", "chosen": f" 1. {w1}{joiner}2. {w2}",
                        "rejected": f" 1. {rejected[0]}{joiner}2. {rejected[1]}", "satisfied_chosen": 2,
                        "satisfied_rejected": 1, "source_indices": [i, j]})
    return out


def read_text_pairs(path: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Records with text ``prompt``, ``chosen``, ``rejected`` (implicit prompts split off) and their
    locations, for the builders above."""
    from .formats import iter_records, parse_pair

    records, locations = [], []
    for location, record in iter_records(path):
        pair = parse_pair(location, record)
        if not all(isinstance(v, str) for v in (pair.prompt, pair.chosen, pair.rejected)):
            raise DataError(location, "chosen", "MAPL construction reads text pairs, not message lists")
        records.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
        locations.append(location)
    return records, locations
