"""Property-based tests: no input makes the readers and parsers fail with anything but DataError
(or FileNotFoundError for a missing file). Random bytes in every file type, random JSON values,
random records of every kind."""

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpokit.data import DataError, load_examples
from dpokit.data.formats import iter_records, parse_list, parse_pair, parse_unpaired

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = ["prompt", "chosen", "rejected", "completion", "label", "responses", "scores", "ranks", "metadata",
          "weight", "role", "content", "data", "id", "scores_x"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 300, max_value=10 ** 320)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", " ", "\ud800", "Assistant:", "\n\nAssistant: x", "user", "assistant"]))
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", 3]),
                                           "content": st.one_of(st.text(max_size=6), st.integers())}), max_size=3)
json_values = st.recursive(scalars | messages, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4),
                           max_leaves=12)
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=6)
valid_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                 "content": st.text(max_size=6)}), min_size=1, max_size=3)
texts = st.text(min_size=1, max_size=8) | st.sampled_from(["\ud800x", " ", "Assistant: a"]) | valid_messages
extra_keys = (st.sampled_from(["weight", "margin", "id", "note", "system", "scores_x", "metadata", "label"])
              | st.text(max_size=5).filter(lambda k: k not in ("prompt", "chosen", "rejected", "completion",
                                                               "responses", "scores", "ranks")))
edge_values = st.sampled_from([float("nan"), float("inf"), -float("inf"), 10 ** 400, -(10 ** 400), [1.0, float("nan")],
                               [10 ** 400], "\ud800", None, True, [], {}, [[1.0]]])
# mostly well-formed records with random additions: these reach the deeper checks (extras, prompts)
near_valid = st.one_of(
    st.fixed_dictionaries({"prompt": texts | st.none(), "chosen": texts, "rejected": texts}),
    st.fixed_dictionaries({"prompt": texts, "completion": texts, "label": scalars}),
    st.fixed_dictionaries({"prompt": texts, "responses": st.lists(texts, max_size=4),
                           "scores": st.lists(scalars, max_size=4)}),
).flatmap(lambda base: st.dictionaries(extra_keys, edge_values | scalars | json_values, max_size=3)
          .map(lambda extra: {**base, **extra}))


def _write(suffix: str, data: bytes) -> str:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return handle.name


def _only_our_errors(fn):
    try:
        return fn()
    except (DataError, FileNotFoundError):
        return None


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes_in_any_file_type(data, suffix):
    path = _write(suffix, data)
    try:
        _only_our_errors(lambda: list(iter_records(path)))
        for kind in ("pairs", "unpaired"):
            _only_our_errors(lambda: load_examples(path, kind=kind))
    finally:
        os.unlink(path)


@SETTINGS
@given(lines=st.lists(st.binary(max_size=60) | (records | near_valid).map(lambda r: json.dumps(r).encode()),
                      max_size=5))
def test_random_jsonl_lines(lines):
    path = _write(".jsonl", b"\n".join(lines))
    try:
        for kind in ("pairs", "unpaired", "lists"):
            _only_our_errors(lambda: load_examples(path, kind=kind, on_bad_content="error"))
            _only_our_errors(lambda: load_examples(path, kind=kind, on_extra_columns="error"))
    finally:
        os.unlink(path)


@SETTINGS
@given(value=json_values)
def test_random_json_documents(value):
    path = _write(".json", json.dumps(value).encode())
    try:
        _only_our_errors(lambda: load_examples(path))
    finally:
        os.unlink(path)


@SETTINGS
@given(rows=st.lists(st.lists(st.text(max_size=8) | st.sampled_from(['"', '""', "[1,", "[1, 2]", "nan", "1e999"]),
                              max_size=5), max_size=4),
       header=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=5))
def test_random_csv_tables(rows, header):
    text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows)
    path = _write(".csv", text.encode("utf-8", "surrogatepass"))
    try:
        _only_our_errors(lambda: load_examples(path))
        _only_our_errors(lambda: load_examples(path, kind="unpaired"))
    finally:
        os.unlink(path)


@settings(max_examples=400, deadline=None)
@given(record=records | near_valid)
def test_parse_pair_and_unpaired_on_random_dicts(record):
    _only_our_errors(lambda: parse_pair("r", record))
    _only_our_errors(lambda: parse_unpaired("r", record))
    _only_our_errors(lambda: parse_list("r", record))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_examples(str(tmp_path / "absent.jsonl"))
