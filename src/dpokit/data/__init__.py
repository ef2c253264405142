"""Data: parse records into typed examples, tokenize them, and batch them."""

from .collate import Batch, EpochBatchOrder, collate
from .formats import (
    DataError,
    PreferencePair,
    RankedList,
    UnpairedExample,
    implicit_prompt,
    iter_records,
    LoadReport,
    load_examples,
    split_pairs,
)
from .tokenize import TokenizedExample, TruncationReport, tokenize_examples

__all__ = [
    "Batch", "EpochBatchOrder", "collate", "DataError", "PreferencePair", "RankedList", "UnpairedExample",
    "implicit_prompt", "iter_records", "LoadReport", "load_examples", "split_pairs", "TokenizedExample",
    "TruncationReport", "tokenize_examples",
]


from typing import Callable, NamedTuple  # noqa: E402


class DataIO(NamedTuple):
    """How a model kind's data is read, tokenized and batched (same signatures for every kind)."""

    load: Callable
    tokenize: Callable
    collate: Callable


def data_io(model_kind: str = "causal_lm") -> DataIO:
    """``causal_lm``: text records; ``vlm``: records with images (:mod:`dpokit.data.vision`)."""
    if model_kind == "vlm":
        from .vision import collate_vision, load_vision_examples, tokenize_vision_examples

        return DataIO(load_vision_examples, tokenize_vision_examples, collate_vision)
    return DataIO(load_examples, tokenize_examples, collate)
