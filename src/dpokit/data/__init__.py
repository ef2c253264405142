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
