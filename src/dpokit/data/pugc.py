"""PUGC: preference pairs from unlabeled user-generated content (Tan et al., ACL 2025, arXiv 2506.04463).

The pipeline, from the paper's abstract and secondary summaries (the pair-selection rule is an
inference: the summaries say "scores -> preference pairs")::

    for each document d (forum post, review, note; unlabeled):
        x = make_query(d)                        # a reader question the document can answer
        keep (x, d) only if keep(x, d)           # the document holds what answering x needs
        y_1..y_n ~ policy(. | x)                 # generate(prompts, n)
        s_k = judge(reference_prompt(d, x), y_k) # the judge sees the document as reference text
        chosen = argmax s, rejected = argmin s   # ties give no pair; optional length control
    write {prompt: x, chosen, rejected, score_chosen, score_rejected} as JSONL; train DPO on it

The judge is any pointwise judge of :mod:`dpokit.preference.judges` (a reward model, a Python
function); :func:`reference_prompt` is what it reads as the prompt, so a reward model sees the document
and the question. :func:`reference_f1` is a built-in reference-guided judge (token F1 against the
document) for use without a model. Querying and filtering are callables because they are usually an
instruction-following model; :func:`terms_in_document` is a simple filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..io import write_jsonl

REFERENCE_HEADER = "Reference text:\n"
QUESTION_HEADER = "\n\nQuestion:\n"
_WORD = re.compile(r"\w+")


def reference_prompt(document: str, query: str) -> str:
    """What the judge reads as the prompt: the document as reference text, then the question."""
    return f"{REFERENCE_HEADER}{document}{QUESTION_HEADER}{query}"


def split_reference_prompt(prompt: str):
    """``(document, query)`` of a :func:`reference_prompt` text; ``(None, prompt)`` for another text."""
    if not prompt.startswith(REFERENCE_HEADER) or QUESTION_HEADER not in prompt:
        return None, prompt
    document, query = prompt[len(REFERENCE_HEADER):].split(QUESTION_HEADER, 1)
    return document, query


def _tokens(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def reference_f1(prompt: str, response: str) -> float:
    """Token F1 between the response and the reference document of a :func:`reference_prompt` (bag of
    lower-cased word tokens); 0 for an empty response or a prompt without a reference. Usable as the
    judge ``dpokit.data.pugc:reference_f1``."""
    document, _ = split_reference_prompt(prompt)
    if document is None:
        raise ValueError("reference_f1 needs a prompt made by reference_prompt(document, query)")
    ref, out = _tokens(document), _tokens(response)
    if not ref or not out:
        return 0.0
    counts: Dict[str, int] = {}
    for t in ref:
        counts[t] = counts.get(t, 0) + 1
    common = 0
    for t in out:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common += 1
    if not common:
        return 0.0
    precision, recall = common / len(out), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def terms_in_document(min_share: float = 1.0, ignore: Sequence[str] = ()) -> Callable[[str, str], bool]:
    """A filter: keep ``(query, document)`` when at least ``min_share`` of the query's word tokens (less
    ``ignore``, e.g. question words) occur in the document."""
    skip = {w.lower() for w in ignore}

    def keep(query: str, document: str) -> bool:
        terms = [t for t in _tokens(query) if t not in skip]
        if not terms:
            return False
        present = set(_tokens(document))
        return sum(t in present for t in terms) / len(terms) >= min_share

    return keep


@dataclass
class PUGCReport:
    documents: int = 0
    no_query: int = 0
    filtered: int = 0
    tied: int = 0
    length_controlled: int = 0
    pairs: int = 0
    examples_filtered: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def build_pugc_pairs(documents: Sequence[str], make_query: Callable[[str], Optional[str]],
                     generate: Callable[[List[str], int], List[List[str]]], judge,
                     keep: Optional[Callable[[str, str], bool]] = None, samples: int = 4,
                     max_length_ratio: Optional[float] = None, min_gap: float = 0.0):
    """``(rows, report)``: one pair per kept document whose ``samples`` answers get different scores.

    ``make_query(d)``: a question (None: no question for this document); ``keep(x, d)``: the filter
    (None keeps all); ``generate(prompts, n)``: ``n`` answers per prompt (e.g.
    ``lambda p, n: HFSampler(...).sample(p, n)[0]``); ``judge``: a pointwise judge (``.score(prompts,
    responses)``, see :mod:`dpokit.preference.judges`), given :func:`reference_prompt` as the prompt.
    ``max_length_ratio``: drop a pair whose longer response has more than this many times the words of
    the shorter (length control); ``min_gap``: drop pairs whose score gap is not above it. Rows:
    ``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``, ``document`` (the index)."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (one chosen, one rejected), got {samples}")
    if max_length_ratio is not None and max_length_ratio < 1:
        raise ValueError(f"max_length_ratio must be >= 1, got {max_length_ratio}")
    report = PUGCReport(documents=len(documents))
    kept = []
    for i, document in enumerate(documents):
        query = make_query(document)
        if not query:
            report.no_query += 1
            continue
        if keep is not None and not keep(query, document):
            report.filtered += 1
            if len(report.examples_filtered) < 5:
                report.examples_filtered.append(query)
            continue
        kept.append((i, document, query))
    answers = generate([q for _, _, q in kept], samples) if kept else []
    if len(answers) != len(kept):
        raise ValueError(f"generate returned answers for {len(answers)} prompts, expected {len(kept)}")
    rows = []
    for (i, document, query), responses in zip(kept, answers):
        responses = [r for r in responses if r.strip()]
        if len(responses) < 2:
            report.tied += 1
            continue
        scores = [float(s) for s in judge.score([reference_prompt(document, query)] * len(responses), responses)]
        best = max(range(len(responses)), key=lambda k: scores[k])
        worst = min(range(len(responses)), key=lambda k: scores[k])
        if scores[best] - scores[worst] <= min_gap or responses[best] == responses[worst]:
            report.tied += 1
            continue
        if max_length_ratio is not None:
            a, b = len(responses[best].split()), len(responses[worst].split())
            if max(a, b) > max_length_ratio * max(min(a, b), 1):
                report.length_controlled += 1
                continue
        rows.append({"prompt": query, "chosen": responses[best], "rejected": responses[worst],
                     "score_chosen": scores[best], "score_rejected": scores[worst], "document": i})
    report.pairs = len(rows)
    return rows, report


def write_pugc_pairs(path: str, rows: Sequence[Dict[str, Any]]) -> str:
    """The pairs as JSONL (what ``data.train`` reads)."""
    write_jsonl(path, list(rows))
    return path
