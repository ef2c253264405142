"""Context-aware preference modeling (PARTIAL; Pitis, Xiao, Le Roux, Sordoni, NeurIPS 2024, arXiv 2407.14916).

A context ``z`` (a criterion, scenario or user profile) resolves an underspecified prompt; a context-aware
reward model scores ``r(x, z, y)`` with ``z`` in its input, trained with the usual loss of its kind on
context-specific labels (for ``bt``: ``-logsig(r(x,z,y_w) - r(x,z,y_l))``; the paper's exact loss was not
read). Here ``z`` is a text column of a pairs file (``--context-column``), rendered before the prompt::

    "Context: {z}\\n\\n{prompt}"

**Context sensitivity** (the paper's preference-reversal evaluation): rows that also carry a reversed
context (``--reversed-context-column``), under which the same pair's label is the opposite, are scored
twice; a model that reads the context gets both right, one that ignores it sits at 1/2 on the pair
(:func:`context_sensitivity`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import DataError

TEMPLATE = "Context: {context}\n\n{prompt}"


def with_context(prompt: Any, context: str) -> Any:
    """The prompt with the context before it (a chat prompt: as a system message)."""
    if isinstance(prompt, str):
        return TEMPLATE.format(context=context, prompt=prompt)
    return [{"role": "system", "content": f"Context: {context}"}] + list(prompt)


def _context(location: str, record: Dict[str, Any], column: str) -> str:
    if column not in record:
        raise DataError(location, column, "is missing", "every row needs the context column")
    value = record[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(location, column, f"must be a non-empty string (the context), got {type(value).__name__} "
                        f"{value!r}"[:200])
    return value


def load_context_pairs(source: Any, column: str, reversed_column: Optional[str] = None,
                       limit: Optional[int] = None) -> List[Any]:
    """Pairs whose prompt carries the row's context; with ``reversed_column``, a second list of the
    same pairs under the reversed context with chosen and rejected swapped: ``(pairs, reversed)``."""
    from ..data.formats import PreferencePair, iter_records, parse_pair

    pairs, flipped = [], []
    for location, record in iter_records(source):
        if limit is not None and len(pairs) >= limit:
            break
        pair = parse_pair(location, record)
        z = _context(location, record, column)
        pairs.append(PreferencePair(with_context(pair.prompt, z), pair.chosen, pair.rejected, pair.extras, location))
        if reversed_column:
            z_rev = _context(location, record, reversed_column)
            flipped.append(PreferencePair(with_context(pair.prompt, z_rev), pair.rejected, pair.chosen, pair.extras,
                                          location))
    if not pairs:
        raise DataError(str(source), None, "has no rows")
    return (pairs, flipped) if reversed_column else pairs


def context_sensitivity(p_context, p_reversed) -> Dict[str, float]:
    """From ``P(label | z)`` and ``P(reversed label | z')`` per pair: accuracy under each context and the
    share of pairs right under both (1 for a model that follows the context, about 0 for one that
    ignores it, since it must then get one of the two wrong)."""
    import torch

    a, b = torch.as_tensor(p_context).double(), torch.as_tensor(p_reversed).double()
    both = ((a > 0.5) & (b > 0.5)).double().mean()
    return {"accuracy_context": float((a > 0.5).double().mean()),
            "accuracy_reversed": float((b > 0.5).double().mean()), "both_correct": float(both)}
