"""Read preference records from files or datasets and parse them into typed examples.

Supported sources: ``.jsonl``, ``.json`` (a list of objects, or ``{"data": [...]}``), ``.parquet``,
``.csv``, a ``datasets.Dataset`` object, or a Hugging Face hub id (loaded with
``datasets.load_dataset``). Column conventions follow TRL so its datasets work unchanged:

* explicit prompt:   ``prompt``, ``chosen``, ``rejected``
* implicit prompt:   ``chosen``, ``rejected`` sharing a prefix (HH-RLHF); the prompt is their
  longest common prefix, cut just after the last assistant-turn marker inside it when one exists
* conversational:    any of the above where values are lists of ``{"role", "content"}`` messages
* unpaired:          ``prompt``, ``completion``, ``label`` (bool: desirable or not)
* ranked lists:      ``prompt``, ``responses`` (K >= 2) and ``scores`` (higher is better) or
  ``ranks`` (1 = best); ties allowed; more objectives as ``scores_<name>`` columns or a dict
  ``scores: {name: [...]}``; optional per-response ``metadata`` (see :class:`RankedList`)

Other numeric columns (``weight``, ``rm_margin``, ...) travel with the example as ``extras``.
Every error names the source location (file and line, or record number) and the field.

Token ids (optional; online rounds write them, so training sees exactly the sampled tokens):
``prompt_ids`` with ``chosen_ids`` / ``rejected_ids`` (pairs), ``completion_ids`` (unpaired) or
``response_ids`` (lists: one list per response, ``null`` where a response has none). Each is a
non-empty list of integers; completion ids need ``prompt_ids``. Tokenization then uses the ids as
given (no re-tokenization, no EOS appended; see :mod:`dpokit.data.tokenize`); a completion without
ids is tokenized from its text.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import DataError
from .files import iter_records  # noqa: F401  (records of a source, read by load_examples)

Text = Union[str, List[Dict[str, str]]]
logger = logging.getLogger(__name__)

# Markers that end a prompt at an assistant turn, most specific first.
ASSISTANT_MARKERS = ("\n\nAssistant:", "\nAssistant:", "Assistant:", "<|assistant|>", "### Response:")


@dataclass
class PreferencePair:
    prompt: Text
    chosen: Text
    rejected: Text
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""
    prompt_ids: Optional[List[int]] = None  # token ids as sampled (see the module docstring)
    chosen_ids: Optional[List[int]] = None
    rejected_ids: Optional[List[int]] = None


@dataclass
class UnpairedExample:
    prompt: Text
    completion: Text
    label: bool
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""
    prompt_ids: Optional[List[int]] = None
    completion_ids: Optional[List[int]] = None


@dataclass
class RankedList:
    """A prompt with K >= 2 responses and how good each is (``data.kind: lists``).

    Record: ``{"prompt": ..., "responses": [y_1, ..., y_K], "scores": [s_1, ..., s_K]}`` (any real
    numbers, higher is better) or ``"ranks": [k_1, ..., k_K]`` (1 = best; stored as ``scores = -ranks``).
    Exactly one of ``scores``/``ranks``. Responses are strings or message lists (not mixed).

    * Ties (equal scores or ranks) are allowed and kept; each consumer says how it treats them
      (pair builders never pair tied responses; every listwise loss documents its rule).
    * Several objectives: ``scores_<name>`` columns next to ``scores``/``ranks``, or a dict
      ``"scores": {"helpful": [...], "harmless": [...]}`` whose first key is the primary objective.
      ``scores`` holds the primary objective, ``objectives`` the others by name, in record order
      (MODPO margins use that order; ``data.objective_weights`` can rank by a weighted sum).
    * ``metadata``: an optional list of K objects, one per response, carried as is.
    * Other numeric columns are list-level ``extras``, copied to every pair built from the list.
    """

    prompt: Text
    responses: List[Text]
    scores: List[float]
    ranks: Optional[List[float]] = None
    objectives: Dict[str, List[float]] = field(default_factory=dict)
    primary: str = "scores"
    metadata: Optional[List[Dict[str, Any]]] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""
    prompt_ids: Optional[List[int]] = None
    response_ids: Optional[List[Optional[List[int]]]] = None  # one entry per response (None: none given)


def completion_ids(example) -> List[Tuple[str, Optional[List[int]]]]:
    """``(column, ids or None)`` of each completion of ``example``, in completion order."""
    if isinstance(example, PreferencePair):
        return [("chosen_ids", example.chosen_ids), ("rejected_ids", example.rejected_ids)]
    if isinstance(example, RankedList):
        given = example.response_ids or [None] * len(example.responses)
        return [(f"response_ids[{j}]", ids) for j, ids in enumerate(given)]
    return [("completion_ids", example.completion_ids)]


# ------------------------------------------------------------------------------------------------
# Reading records
# ------------------------------------------------------------------------------------------------


ID_FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids", "response_ids")
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


def _check_encodable(location: str, name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate, e.g. from a JSON "\ud800" escape
        raise DataError(location, name, f"contains a character that is not valid Unicode "
                        f"({text[err.start:err.end]!r} at position {err.start})",
                        "fix the text encoding upstream") from None


def _check_text(location: str, name: str, value: Any, allow_empty: bool = False) -> Text:
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(location, name, "is empty", "drop the record or fill the field", content=True)
        _check_encodable(location, name, value)
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(location, name, "is an empty message list", content=not allow_empty)
        for j, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(location, name, f"message {j} must be an object with 'role' and 'content'")
            if not isinstance(message["role"], str):
                raise DataError(location, name, f"message {j} 'role' must be a string, "
                                f"got {type(message['role']).__name__}")
            if not isinstance(message["content"], str):
                raise DataError(location, name, f"message {j} 'content' must be a string, "
                                f"got {type(message['content']).__name__}")
            _check_encodable(location, name, message["content"])
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
            extras[key] = _finite_number(location, key, value)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            extras[key] = [_finite_number(location, key, v) for v in value]
    return extras


def _finite_number(location: str, key: Any, value) -> float:
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise DataError(location, str(key), f"is {value if isinstance(value, float) else number}",
                        "numeric fields must be finite numbers; fix or drop the record")
    return number


def token_ids(location: str, name: str, value: Any) -> List[int]:
    """A column of token ids: a non-empty list of non-negative integers (a JSON number such as 3.0 is refused)."""
    if not isinstance(value, list) or not value:
        raise DataError(location, name, f"must be a non-empty list of token ids (integers), got "
                        f"{'an empty list' if isinstance(value, list) else type(value).__name__}")
    for j, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(location, name, f"entry {j} is {v!r}, not a token id (an integer >= 0)")
    return list(value)


def _record_ids(location: str, record: Dict[str, Any], columns: Sequence[str]):
    """``(prompt ids, [completion ids per column])`` of a record (None where not given); completion ids need
    the prompt ids they were sampled after."""
    ids = [token_ids(location, c, record[c]) if record.get(c) is not None else None for c in columns]
    prompt = token_ids(location, "prompt_ids", record["prompt_ids"]) if record.get("prompt_ids") is not None else None
    if prompt is None and any(row is not None for row in ids):
        given = next(c for c, row in zip(columns, ids) if row is not None)
        raise DataError(location, "prompt_ids", f"is missing, but {given} is given",
                        "completion token ids are only meaningful after the prompt ids they were sampled from")
    return prompt, ids


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
            raise DataError(location, name, "is missing", f"pairs need 'chosen' and 'rejected' (got {sorted(map(str, record))})")
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
    pair = PreferencePair(prompt, chosen, rejected, _numeric_extras(location, record, PAIR_FIELDS + ID_FIELDS), location)
    pair.prompt_ids, (pair.chosen_ids, pair.rejected_ids) = _record_ids(location, record, ("chosen_ids", "rejected_ids"))
    return pair


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
    example = UnpairedExample(prompt, completion, label, _numeric_extras(location, record, UNPAIRED_FIELDS + ID_FIELDS),
                              location)
    example.prompt_ids, (example.completion_ids,) = _record_ids(location, record, ("completion_ids",))
    return example


LIST_FIELDS = ("prompt", "responses", "scores", "ranks", "metadata") + ID_FIELDS
SCORE_COLUMN_PREFIX = "scores_"


def _number_list(location: str, name: str, value: Any, size: int) -> List[float]:
    if not isinstance(value, list):
        raise DataError(location, name, f"must be a list of {size} numbers, got {type(value).__name__}")
    numbers = []
    for j, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(location, name, f"entry {j} must be a number, got {type(v).__name__}")
        try:
            number = float(v)
        except OverflowError:
            number = math.inf
        if math.isnan(number):
            raise DataError(location, name, f"entry {j} is NaN", "scores must be finite numbers")
        if not math.isfinite(number):
            raise DataError(location, name, f"entry {j} is {number}", "scores must be finite numbers")
        numbers.append(number)
    if len(numbers) != size:
        raise DataError(location, name, f"has {len(numbers)} values for {size} responses",
                        "give exactly one value per response")
    return numbers


def parse_list(location: str, record: Dict[str, Any]) -> RankedList:
    """Parse a ranked-list record (see :class:`RankedList`); errors name the record and field."""
    if record.get("prompt") is None:
        raise DataError(location, "prompt", "is missing", "ranked lists need an explicit 'prompt'")
    prompt = _check_text(location, "prompt", record["prompt"], allow_empty=True)
    raw = record.get("responses")
    if not isinstance(raw, list):
        raise DataError(location, "responses", f"must be a list of responses, got {type(raw).__name__}")
    if len(raw) < 2:
        raise DataError(location, "responses", f"has {len(raw)} response(s)",
                        "a ranked list needs at least 2 responses")
    responses = [_check_text(location, f"responses[{j}]", r) for j, r in enumerate(raw)]
    if len({isinstance(r, str) for r in responses}) > 1:
        raise DataError(location, "responses", "mixes text and message lists")
    k = len(responses)
    has_scores, has_ranks = record.get("scores") is not None, record.get("ranks") is not None
    if has_scores and has_ranks:
        raise DataError(location, "ranks", "is given together with 'scores'",
                        "give either scores (higher is better) or ranks (1 = best), not both")
    if not (has_scores or has_ranks):
        raise DataError(location, "scores", "is missing",
                        "a ranked list needs 'scores' (one number per response, higher is better) "
                        "or 'ranks' (1 = best)")
    objectives: Dict[str, List[float]] = {}
    ranks = None
    if has_ranks:
        ranks = _number_list(location, "ranks", record["ranks"], k)
        for j, r in enumerate(ranks):
            if r < 1:
                raise DataError(location, "ranks", f"entry {j} is {r:g}", "ranks start at 1 (the best response)")
        primary, scores = "ranks", [-r for r in ranks]
    elif isinstance(record["scores"], dict):
        if not record["scores"]:
            raise DataError(location, "scores", "is an empty mapping", "give {objective: [one score per response]}")
        for name, values in record["scores"].items():
            objectives[str(name)] = _number_list(location, f"scores.{name}", values, k)
        primary = next(iter(objectives))
        scores = objectives.pop(primary)
    else:
        primary, scores = "scores", _number_list(location, "scores", record["scores"], k)
    score_columns = [key for key in record if isinstance(key, str) and key.startswith(SCORE_COLUMN_PREFIX)]
    for key in score_columns:
        name = key[len(SCORE_COLUMN_PREFIX):]
        if not name or name in objectives or name == primary:
            raise DataError(location, key, f"names objective {name!r} twice (or no name)",
                            "give each objective one column")
        objectives[name] = _number_list(location, key, record[key], k)
    metadata = record.get("metadata")
    if isinstance(metadata, list):
        if len(metadata) != k or not all(isinstance(m, dict) for m in metadata):
            raise DataError(location, "metadata", f"must be a list of {k} objects (one per response)")
    else:
        metadata = None  # a record-level 'metadata' object is dropped, as in the other formats
    extras = _numeric_extras(location, record, LIST_FIELDS + tuple(score_columns))
    item = RankedList(prompt, responses, scores, ranks, objectives, primary, metadata, extras, location)
    raw_ids = record.get("response_ids")
    if raw_ids is not None and (not isinstance(raw_ids, list) or len(raw_ids) != k):
        raise DataError(location, "response_ids", f"must be a list of {k} entries (one per response, each a list "
                        f"of token ids or null), got {type(raw_ids).__name__}"
                        + (f" of {len(raw_ids)}" if isinstance(raw_ids, list) else ""))
    columns = tuple(f"response_ids[{j}]" for j in range(k))
    flat = {**record, **{c: v for c, v in zip(columns, raw_ids or [])}}
    item.prompt_ids, ids = _record_ids(location, flat, columns)
    item.response_ids = list(ids) if raw_ids is not None else None
    return item


def pair_as_list(pair: PreferencePair) -> RankedList:
    """A preference pair read as a two-response list (chosen scores 1, rejected 0)."""
    ids = None if pair.chosen_ids is None and pair.rejected_ids is None else [pair.chosen_ids, pair.rejected_ids]
    return RankedList(pair.prompt, [pair.chosen, pair.rejected], [1.0, 0.0], extras=dict(pair.extras),
                      location=pair.location, prompt_ids=pair.prompt_ids, response_ids=ids)


@dataclass
class LoadReport:
    records: int = 0
    skipped: List[str] = field(default_factory=list)
    ignored_columns: Dict[str, int] = field(default_factory=dict)  # column -> records it was ignored in

    def summary(self) -> str:
        text = f"{self.records} records read, {len(self.skipped)} skipped for unusable content"
        if self.ignored_columns:
            text += f", column(s) ignored: {', '.join(sorted(self.ignored_columns))}"
        return text


# Fields some format reads, and text/metadata columns common in public preference datasets that
# dpokit knowingly drops. Any other non-numeric column is an "extra column" (see load_examples).
STEP_PAIR_FIELDS = ("prefix_steps", "chosen_step", "rejected_step", "chosen_final", "rejected_final")  # data.steps
READ_FIELDS = frozenset(PAIR_FIELDS + UNPAIRED_FIELDS + LIST_FIELDS + STEP_PAIR_FIELDS)
METADATA_COLUMNS = frozenset((
    "id", "uid", "idx", "index", "prompt_id", "example_id", "source", "dataset", "data_source", "category",
    "subset", "split", "language", "lang", "task", "domain", "model", "chosen_model", "rejected_model",
    "annotator", "metadata", "meta", "tags", "url", "timestamp", "messages",
))


def extra_columns(record: Dict[str, Any]) -> List[str]:
    """Non-numeric columns of ``record`` that no format reads and that are not known metadata."""
    out = []
    for key, value in record.items():
        if key in READ_FIELDS or key in METADATA_COLUMNS or value is None:
            continue
        numeric = isinstance(value, (int, float)) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, (int, float)) for v in value))
        if not numeric:
            out.append(str(key))
    return out


def check_extras_consistent(examples: Sequence) -> None:
    """Every example must carry the same numeric extras (and lists of one length): a column present
    in some records only would otherwise stop training at the first batch that mixes them."""
    if not examples:
        return
    first = examples[0]
    shape = {k: (len(v) if isinstance(v, list) else None) for k, v in first.extras.items()}
    for ex in examples[1:]:
        if ex.extras.keys() != shape.keys():
            missing = sorted(set(shape) - set(ex.extras))
            if missing:
                key, where = missing[0], f"missing here but present in {first.location}"
            else:
                key, where = sorted(set(ex.extras) - set(shape))[0], f"present here but missing in {first.location}"
            raise DataError(ex.location, key, f"numeric field is {where}",
                            "give every record the field (a number), or remove the column")
        for key, length in shape.items():
            value = ex.extras[key]
            if (len(value) if isinstance(value, list) else None) != length:
                raise DataError(ex.location, key, f"has a different shape than in {first.location} "
                                f"({'a list of ' + str(len(value)) if isinstance(value, list) else 'a number'} "
                                f"vs {'a list of ' + str(length) if length is not None else 'a number'})",
                                "give every record the same number of values")


def load_examples(source: Any, kind: str = "pairs", split: str = "train", limit: Optional[int] = None,
                  on_bad_content: str = "skip", report: Optional[LoadReport] = None,
                  on_extra_columns: str = "ignore"):
    """Read and parse every record of ``source`` as ``kind`` (``pairs``, ``unpaired`` or ``lists``).

    ``kind="unpaired"`` also accepts pair records and splits each into a desirable and an
    undesirable example (see :func:`split_pairs`). ``kind="lists"`` gives :class:`RankedList`
    examples and also accepts pair records (as two-response lists). Records with unusable content (empty
    completion, chosen == rejected) are skipped and counted (``on_bad_content="skip"``, logged
    with their locations) or stop the load (``"error"``); structural errors always raise.

    Columns: the fields of the format are read, numeric columns travel as ``extras`` (and must be
    present, with the same shape, in every record), known metadata columns (:data:`METADATA_COLUMNS`)
    are dropped. Any other non-numeric column is dropped and named once in the log
    (``on_extra_columns="ignore"``), or stops the load at its first record (``"error"``).
    """
    if on_bad_content not in ("skip", "error"):
        raise ValueError(f"on_bad_content must be 'skip' or 'error', got {on_bad_content!r}")
    if on_extra_columns not in ("ignore", "error"):
        raise ValueError(f"on_extra_columns must be 'ignore' or 'error', got {on_extra_columns!r}")
    report = report if report is not None else LoadReport()
    examples = []
    for location, record in iter_records(source, split=split):
        if limit is not None and len(examples) >= limit:
            break
        report.records += 1
        for column in extra_columns(record):
            if on_extra_columns == "error":
                raise DataError(location, column, "is a column dpokit does not read (not a field of the format, "
                                "not numeric, not known metadata)",
                                "remove the column, or set data.on_extra_columns: ignore")
            report.ignored_columns[column] = report.ignored_columns.get(column, 0) + 1
        try:
            examples.extend(_parse_record(location, record, kind))
        except DataError as err:
            if not err.content or on_bad_content == "error":
                raise
            report.skipped.append(str(err))
    if report.skipped:
        shown = "; ".join(report.skipped[:3]) + (" ..." if len(report.skipped) > 3 else "")
        logger.warning("skipped %d record(s) with unusable content: %s", len(report.skipped), shown)
    if report.ignored_columns:
        logger.warning("ignored column(s) dpokit does not read: %s (data.on_extra_columns: error refuses them)",
                       ", ".join(f"{k} ({n} records)" for k, n in sorted(report.ignored_columns.items())))
    if not examples:
        raise DataError(str(source), None, "contains no usable records")
    check_extras_consistent(examples)
    return examples


def _parse_record(location: str, record: Dict[str, Any], kind: str) -> list:
    found = detect_kind(record)
    if kind == "pairs" and found == "unknown" and ("chosen_step" in record or "rejected_step" in record):
        from .steps import parse_step_pair  # a step pair (dpokit.data.steps): the step scorer tokenizes it

        return [parse_step_pair(location, record)]
    if kind == "pairs":
        if found != "pairs" and ("chosen" in record or "rejected" in record):
            return [parse_pair(location, record)]  # names the missing field
        if found == "lists":
            raise DataError(location, "responses", "this record is a ranked list, not a pair",
                            "set data.kind: lists (a pairwise loss then trains on pairs built from the lists)")
        if found != "pairs":
            raise DataError(location, None, f"expected a preference pair with 'chosen' and 'rejected', "
                            f"got fields {sorted(map(str, record))}")
        return [parse_pair(location, record)]
    if kind == "unpaired":
        if found == "pairs":
            return split_pairs([parse_pair(location, record)])
        if found == "unpaired" or "completion" in record or "label" in record:
            return [parse_unpaired(location, record)]  # names the missing field
        raise DataError(location, None, f"expected 'prompt', 'completion', 'label' (or a pair), "
                        f"got fields {sorted(map(str, record))}")
    if kind == "lists":
        if found == "pairs":
            return [pair_as_list(parse_pair(location, record))]
        if found == "lists" or "scores" in record or "ranks" in record:
            return [parse_list(location, record)]
        raise DataError(location, "responses", "is missing", "ranked lists need 'prompt', 'responses' and "
                        f"'scores' or 'ranks' (or a pair); got fields {sorted(map(str, record))}")
    raise ValueError(f"unsupported data kind {kind!r} (pairs, unpaired or lists)")


def split_pairs(pairs: Iterable[PreferencePair]) -> List[UnpairedExample]:
    """Each pair becomes a desirable (chosen) and an undesirable (rejected) unpaired example."""
    out = []
    for pair in pairs:
        out.append(UnpairedExample(pair.prompt, pair.chosen, True, dict(pair.extras), pair.location,
                                   pair.prompt_ids, pair.chosen_ids))
        out.append(UnpairedExample(pair.prompt, pair.rejected, False, dict(pair.extras), pair.location,
                                   pair.prompt_ids, pair.rejected_ids))
    return out
