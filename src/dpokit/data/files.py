"""Records from a source: JSONL, JSON, Parquet and CSV files, ``datasets`` objects and hub ids.

Each record comes with its location (``file:line``, ``dataset record i``), which every error about
it names. Parsing a record into a typed example is :mod:`dpokit.data.formats`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, Iterator, Optional, Tuple

from ..errors import DataError


def iter_records(source: Any, split: str = "train") -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Yield ``(location, record)`` from a file path, a ``datasets.Dataset`` or a hub id."""
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        yield from _iter_file(os.fspath(source))
        return
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        name = getattr(source, "info", None)
        label = getattr(name, "dataset_name", None) or "dataset"
        for i, record in enumerate(source):
            yield f"{label} record {i}", dict(record)
        return
    if isinstance(source, str):
        if source.endswith((".jsonl", ".json", ".parquet", ".csv")) or os.sep in source and not looks_like_hub_id(source):
            raise FileNotFoundError(f"data file not found: {source}")
        import datasets

        dataset = datasets.load_dataset(source, split=split)
        for i, record in enumerate(dataset):
            yield f"{source}[{split}] record {i}", dict(record)
        return
    raise TypeError(f"cannot read preference data from {type(source).__name__}")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name``: what a hub id looks like (a local path has another shape or exists)."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/"))


def _iter_file(path: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    name = os.path.basename(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{name}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(location, None, f"not valid UTF-8 ({err.reason} at byte {err.start})",
                                    "re-encode the file as UTF-8") from None
                if number == 1:
                    line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(location, None, f"invalid JSON: {err.msg} at column {err.colno}",
                                    "one JSON object per line") from None
                except (ValueError, RecursionError) as err:  # e.g. integers too long, nesting too deep
                    raise DataError(location, None, f"unreadable JSON: {err}") from None
                if not isinstance(record, dict):
                    raise DataError(location, None, f"expected a JSON object, got {type(record).__name__}")
                yield location, record
    elif suffix == ".json":
        try:
            with open(path, "r", encoding="utf-8-sig") as handle:
                data = json.load(handle)
        except UnicodeDecodeError as err:
            raise DataError(f"{name} byte {err.start}", None, f"not valid UTF-8 ({err.reason})",
                            "re-encode the file as UTF-8") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{name}:{err.lineno}", None, f"invalid JSON: {err.msg} at column {err.colno}") from None
        except (ValueError, RecursionError) as err:  # e.g. integers too long, nesting too deep
            raise DataError(name, None, f"unreadable JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(name, None, "expected a JSON list of records (or {\"data\": [...]})")
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"{name} record {i}", None, f"expected an object, got {type(record).__name__}")
            yield f"{name} record {i}", record
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises its own types for damaged files
            raise DataError(name, None, f"unreadable Parquet file: {err}") from None
        for i, record in enumerate(table.to_pylist()):
            yield f"{name} row {i}", record
    elif suffix == ".csv":
        yield from _iter_csv(path, name)
    else:
        raise ValueError(f"{name}: unsupported data file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


def _iter_csv(path: str, name: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """CSV rows; the header is line 1. A row with more cells than the header is an error."""
    with open(path, "r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, restkey=_CSV_OVERFLOW)
        line = 1
        try:
            for record in reader:
                line = reader.line_num
                location = f"{name}:{line}"
                if _CSV_OVERFLOW in record:
                    raise DataError(location, None, f"has {len(reader.fieldnames) + len(record[_CSV_OVERFLOW])} "
                                    f"cells but the header names {len(reader.fieldnames)} columns",
                                    "quote cells that contain commas")
                yield location, {k: _csv_value(k, v) for k, v in record.items()}
        except UnicodeDecodeError as err:
            raise DataError(f"{name} after line {line}", None, f"not valid UTF-8 ({err.reason})",
                            "re-encode the file as UTF-8") from None
        except csv.Error as err:
            raise DataError(f"{name}:{reader.line_num}", None, f"malformed CSV: {err}") from None


_CSV_OVERFLOW = "\x00overflow"  # DictReader key for cells beyond the header (no real column has it)
CSV_TEXT_FIELDS = ("prompt", "chosen", "rejected", "completion")


def _csv_value(column: str, value: Optional[str]) -> Any:
    """CSV cells are text. Message lists (and lists of numbers) are written as JSON inside a cell;
    a cell of any column other than the text fields that reads as a number is that number (so
    numeric columns such as ``weight`` travel as extras, as they do from JSON); empty cells outside
    the text fields are null."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError):
            return value
    if column not in CSV_TEXT_FIELDS:
        if not stripped:
            return None
        try:
            return float(stripped)
        except ValueError:
            return value
    return value


# ------------------------------------------------------------------------------------------------
# Parsing records into examples
# ------------------------------------------------------------------------------------------------
