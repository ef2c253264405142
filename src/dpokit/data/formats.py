"""Read preference records from files or datasets and parse them into typed examples.

Supported sources: ``.jsonl``, ``.json`` (a list of objects, or ``{"data": [...]}``), ``.parquet``,
``.csv``, a ``datasets.Dataset`` object, or a Hugging Face hub id (loaded with
``datasets.load_dataset``). Column conventions follow TRL so its datasets work unchanged:

* explicit prompt:   ``prompt``, ``chosen``, ``rejected``
* implicit prompt:   ``chosen``, ``rejected`` sharing a prefix (HH-RLHF); the prompt is their
  longest common prefix, cut just after the last assistant-turn marker inside it when one exists
* conversational:    any of the above where values are lists of ``{"role", "content"}`` messages
* unpaired:          ``prompt``, ``completion``, ``label`` (bool: desirable or not)

Other numeric columns (``weight``, ``rm_margin``, ...) travel with the example as ``extras``.
Every error names the source location (file and line, or record number) and the field.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

Text = Union[str, List[Dict[str, str]]]
logger = logging.getLogger(__name__)

# Markers that end a prompt at an assistant turn, most specific first.
ASSISTANT_MARKERS = ("\n\nAssistant:", "\nAssistant:", "Assistant:", "<|assistant|>", "### Response:")


class DataError(ValueError):
    """A record that cannot be used, with where it is and which field is wrong.

    ``content=True`` marks a well-formed record whose content is unusable (an empty completion,
    chosen identical to rejected): those may be skipped (counted and logged) by policy, while
    structural errors (bad JSON, missing fields, wrong types) always stop the run.
    """

    def __init__(self, location: str, field_name: Optional[str], problem: str, fix: str = "",
                 content: bool = False):
        self.location = location
        self.field = field_name
        self.problem = problem
        self.content = content
        where = f"{location}" + (f", field '{field_name}'" if field_name else "")
        message = f"{where}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


@dataclass
class PreferencePair:
    prompt: Text
    chosen: Text
    rejected: Text
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""


@dataclass
class UnpairedExample:
    prompt: Text
    completion: Text
    label: bool
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""


# ------------------------------------------------------------------------------------------------
# Reading records
# ------------------------------------------------------------------------------------------------


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
        if source.endswith((".jsonl", ".json", ".parquet", ".csv")) or os.sep in source and not _looks_like_hub_id(source):
            raise FileNotFoundError(f"data file not found: {source}")
        import datasets

        dataset = datasets.load_dataset(source, split=split)
        for i, record in enumerate(dataset):
            yield f"{source}[{split}] record {i}", dict(record)
        return
    raise TypeError(f"cannot read preference data from {type(source).__name__}")


def _looks_like_hub_id(source: str) -> bool:
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

PAIR_FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED_FIELDS = ("prompt", "completion", "label")


def detect_kind(record: Dict[str, Any]) -> str:
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        return "pairs"
    if {"completion", "label"} <= keys:
        return "unpaired"
    if "responses" in keys:
        return "lists"
    return "unknown"


def _check_text(location: str, name: str, value: Any, allow_empty: bool = False) -> Text:
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(location, name, "is empty", "drop the record or fill the field", content=True)
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(location, name, "is an empty message list")
        for j, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(location, name, f"message {j} must be an object with 'role' and 'content'")
            if not isinstance(message["content"], str):
                raise DataError(location, name, f"message {j} 'content' must be a string, "
                                f"got {type(message['content']).__name__}")
        return value
    if value is None:
        raise DataError(location, name, "is missing (null)")
    raise DataError(location, name, f"must be a string or a list of messages, got {type(value).__name__}")


def _numeric_extras(location: str, record: Dict[str, Any], known: Sequence[str]) -> Dict[str, Any]:
    extras = {}
    for key, value in record.items():
        if key in known:
            continue
        if isinstance(value, bool):
            extras[key] = float(value)
        elif isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise DataError(location, key, f"is {value}", "numeric fields must be finite")
            extras[key] = float(value)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            if any(not math.isfinite(float(v)) for v in value):
                raise DataError(location, key, "contains a non-finite number")
            extras[key] = [float(v) for v in value]
    return extras


def implicit_prompt(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """Split two texts sharing a prefix into (prompt, chosen_completion, rejected_completion).

    The prompt is the longest common prefix, cut just after the last assistant marker inside it
    (``"\\n\\nAssistant:"`` for HH-RLHF) so both completions start at the assistant's answer.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    cut = -1
    for marker in ASSISTANT_MARKERS:
        idx = common.rfind(marker)
        if idx >= 0:
            cut = max(cut, idx + len(marker))
    if cut < 0:
        cut = n
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _implicit_messages(location: str, chosen: list, rejected: list) -> Tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # the completions must start at an assistant turn
    while n > 0 and (n >= len(chosen) or chosen[n].get("role") != "assistant"):
        n -= 1
    if n == 0:
        raise DataError(location, "chosen", "chosen and rejected share no conversation prefix",
                        "add an explicit 'prompt' field")
    return chosen[:n], chosen[n:], rejected[n:]


def parse_pair(location: str, record: Dict[str, Any]) -> PreferencePair:
    for name in ("chosen", "rejected"):
        if name not in record:
            raise DataError(location, name, "is missing", f"pairs need 'chosen' and 'rejected' (got {sorted(record)})")
    chosen = _check_text(location, "chosen", record["chosen"])
    rejected = _check_text(location, "rejected", record["rejected"])
    if type(chosen) is not type(rejected):
        raise DataError(location, "rejected", "chosen and rejected must both be text or both be message lists")
    if "prompt" in record and record["prompt"] is not None:
        prompt = _check_text(location, "prompt", record["prompt"], allow_empty=True)
        if isinstance(prompt, list) and isinstance(chosen, list) and chosen[: len(prompt)] == prompt and len(chosen) > len(prompt):
            # TRL also accepts chosen/rejected holding the whole conversation
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    elif isinstance(chosen, str):
        prompt, chosen, rejected = implicit_prompt(chosen, rejected)
    else:
        prompt, chosen, rejected = _implicit_messages(location, chosen, rejected)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise DataError(location, name, "has no completion after the shared prompt", content=True)
    if chosen == rejected:
        raise DataError(location, "rejected", "is identical to chosen", "a pair needs two different completions",
                        content=True)
    return PreferencePair(prompt, chosen, rejected, _numeric_extras(location, record, PAIR_FIELDS), location)


def parse_label(location: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(location, "label", f"must be true/false (or 1/0), got {value!r}")


def parse_unpaired(location: str, record: Dict[str, Any]) -> UnpairedExample:
    for name in UNPAIRED_FIELDS:
        if name not in record:
            raise DataError(location, name, "is missing", f"unpaired examples need {list(UNPAIRED_FIELDS)}")
    prompt = _check_text(location, "prompt", record["prompt"], allow_empty=True)
    completion = _check_text(location, "completion", record["completion"])
    label = parse_label(location, record["label"])
    return UnpairedExample(prompt, completion, label, _numeric_extras(location, record, UNPAIRED_FIELDS), location)


@dataclass
class LoadReport:
    records: int = 0
    skipped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.records} records read, {len(self.skipped)} skipped for unusable content"


def load_examples(source: Any, kind: str = "pairs", split: str = "train", limit: Optional[int] = None,
                  on_bad_content: str = "skip", report: Optional[LoadReport] = None):
    """Read and parse every record of ``source`` as ``kind`` (``pairs`` or ``unpaired``).

    ``kind="unpaired"`` also accepts pair records and splits each into a desirable and an
    undesirable example (see :func:`split_pairs`). Records with unusable content (empty
    completion, chosen == rejected) are skipped and counted (``on_bad_content="skip"``, logged
    with their locations) or stop the load (``"error"``); structural errors always raise.
    """
    if on_bad_content not in ("skip", "error"):
        raise ValueError(f"on_bad_content must be 'skip' or 'error', got {on_bad_content!r}")
    report = report if report is not None else LoadReport()
    examples = []
    for location, record in iter_records(source, split=split):
        if limit is not None and len(examples) >= limit:
            break
        report.records += 1
        try:
            examples.extend(_parse_record(location, record, kind))
        except DataError as err:
            if not err.content or on_bad_content == "error":
                raise
            report.skipped.append(str(err))
    if report.skipped:
        shown = "; ".join(report.skipped[:3]) + (" ..." if len(report.skipped) > 3 else "")
        logger.warning("skipped %d record(s) with unusable content: %s", len(report.skipped), shown)
    if not examples:
        raise DataError(str(source), None, "contains no usable records")
    return examples


def _parse_record(location: str, record: Dict[str, Any], kind: str) -> list:
    found = detect_kind(record)
    if kind == "pairs":
        if found != "pairs" and ("chosen" in record or "rejected" in record):
            return [parse_pair(location, record)]  # names the missing field
        if found != "pairs":
            raise DataError(location, None, f"expected a preference pair with 'chosen' and 'rejected', "
                            f"got fields {sorted(record)}")
        return [parse_pair(location, record)]
    if kind == "unpaired":
        if found == "pairs":
            return split_pairs([parse_pair(location, record)])
        if found == "unpaired":
            return [parse_unpaired(location, record)]
        raise DataError(location, None, f"expected 'prompt', 'completion', 'label' (or a pair), "
                        f"got fields {sorted(record)}")
    raise ValueError(f"unsupported data kind {kind!r} (pairs or unpaired)")


def split_pairs(pairs: Iterable[PreferencePair]) -> List[UnpairedExample]:
    """Each pair becomes a desirable (chosen) and an undesirable (rejected) unpaired example."""
    out = []
    for pair in pairs:
        out.append(UnpairedExample(pair.prompt, pair.chosen, True, dict(pair.extras), pair.location))
        out.append(UnpairedExample(pair.prompt, pair.rejected, False, dict(pair.extras), pair.location))
    return out
