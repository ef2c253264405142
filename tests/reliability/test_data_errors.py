"""Bad input: every loader stops on malformed data naming file, line/record, field and the fix;
content problems follow their policy (skip and count, or stop)."""

import json

import pytest

from dpokit.data import DataError, LoadReport, load_examples, tokenize_examples
from dpokit.data import formats

from conftest import write_jsonl

GOOD = {"prompt": "p", "chosen": " a", "rejected": " b"}


def load_error(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_examples(str(path), **kwargs)
    return info.value


# ---- structural errors: every format names where and what -----------------------------------------
STRUCTURAL = [
    ({"prompt": "p", "chosen": " a"}, "rejected", "is missing"),
    ({"prompt": "p", "chosen": 3, "rejected": " b"}, "chosen", "must be a string or a list of messages"),
    ({"prompt": "p", "chosen": None, "rejected": " b"}, "chosen", "is missing (null)"),
    ({"prompt": 7, "chosen": " a", "rejected": " b"}, "prompt", "must be a string"),
    ({"prompt": "p", "chosen": " a", "rejected": " b", "weight": "heavy"}, None, None),  # ignored column
    ({"prompt": "p", "chosen": [{"role": 1, "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
     "chosen", "'role' must be a string"),
    ({"prompt": "p", "chosen": "\ud800 a", "rejected": " b"}, "chosen", "not valid Unicode"),
    ({"prompt": "p", "chosen": " a", "rejected": " b", "margin": float("inf")}, "margin", "is inf"),
    ({"prompt": "p", "chosen": " a", "rejected": " b", "margin": 10 ** 400}, "margin", "is inf"),
    ({"prompt": "p", "chosen": " a", "rejected": " b", "margins": [1.0, float("nan")]}, "margins", "is nan"),
]


def _csv_can_hold(row) -> bool:
    """CSV cells are text, every row has every column (an absent cell is empty: a content problem),
    and a lone surrogate cannot be written as UTF-8."""
    return (not set(GOOD) - set(row) and all(isinstance(v, str) and "\ud800" not in v for v in row.values()))


@pytest.mark.parametrize("row, field, problem, fmt", [
    (*case, fmt) for fmt in ("jsonl", "json", "csv") for case in STRUCTURAL if fmt != "csv" or _csv_can_hold(case[0])
])
def test_structural_errors_name_file_record_and_field(tmp_path, row, field, problem, fmt):
    rows = [GOOD, row]
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        where = "d.jsonl:2"
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(rows))
        where = "d.json record 1"
    else:
        import csv

        path = tmp_path / "d.csv"
        columns = sorted(set(GOOD) | set(row))
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in columns})
        where = "d.csv:3"
    if problem is None:
        report = LoadReport()
        assert len(load_examples(str(path), report=report)) == 2
        assert report.ignored_columns == {"weight": 1}
        return
    err = load_error(path)
    assert err.location == where and err.field == field
    assert problem in str(err) and str(err).startswith(f"{where}, field '{field}'")


@pytest.mark.parametrize("name, data, where, problem", [
    ("d.jsonl", b'{"prompt": "p", "chosen": " a", "rejected": " b"}\n{"prompt": "p", "chosen": "a\n', "d.jsonl:2",
     "invalid JSON"),
    ("d.jsonl", b'{"prompt": "p", "chosen": " a", "rejected": " b"}\n"just a string"\n', "d.jsonl:2",
     "expected a JSON object"),
    ("d.jsonl", b'{"prompt": "p", "chosen": " a", "rejected": " b"}\n{"prompt": "\xff\xfe"}\n', "d.jsonl:2",
     "not valid UTF-8"),
    ("d.jsonl", b'{"x": ' + b"[" * 100000 + b"\n", "d.jsonl:1", "JSON"),
    ("d.jsonl", b'{"prompt": "p", "chosen": " a", "rejected": " b", "n": ' + b"9" * 5000 + b"}\n", "d.jsonl:1",
     "JSON"),
    ("d.json", b'[{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": ', "d.json:1", "invalid JSON"),
    ("d.json", b'{"rows": []}', "d.json", "expected a JSON list"),
    ("d.json", b'[{"prompt": "p", "chosen": " a", "rejected": " b"}, 3]', "d.json record 1", "expected an object"),
    ("d.json", b'[{"prompt": "\xc3\x28"}]', "d.json byte", "not valid UTF-8"),
    ("d.csv", b"prompt,chosen,rejected\np, a, b\np, a, b, extra\n", "d.csv:3", "cells but the header names 3"),
    ("d.csv", b"prompt,chosen,rejected\np, a, b\n\xff, a, b\n", "d.csv after line", "not valid UTF-8"),
    ("d.csv", b"prompt,chosen,rejected\np, a, b\np, a\n", "d.csv:3", "is missing (null)"),
    ("d.csv", b"prompt,chosen,rejected,weight\np, a, b,1\np, c, d,nan\n", "d.csv:3", "is nan"),
    ("d.parquet", b"PAR1 not really parquet", "d.parquet", "unreadable Parquet"),
])
def test_unreadable_files_name_the_place(tmp_path, name, data, where, problem):
    path = tmp_path / name
    path.write_bytes(data)
    err = load_error(path)
    assert str(err).startswith(where) and problem in str(err)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    row = json.dumps(GOOD).encode()
    for name, data in (("b.jsonl", b"\xef\xbb\xbf" + row + b"\n"), ("b.json", b"\xef\xbb\xbf[" + row + b"]"),
                       ("b.csv", b"\xef\xbb\xbfprompt,chosen,rejected\np, a, b\n")):
        (tmp_path / name).write_bytes(data)
        [example] = load_examples(str(tmp_path / name))
        assert example.prompt == "p"


# ---- content problems: skipped and counted by default, or stop the run ----------------------------
@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": "p", "chosen": " ", "rejected": " b"}, "chosen", "is empty"),
    ({"prompt": "p", "chosen": " a", "rejected": ""}, "rejected", "is empty"),
    ({"prompt": "p", "chosen": " a", "rejected": " a"}, "rejected", "is identical to chosen"),
    ({"chosen": "Human: hi Assistant: same", "rejected": "Human: hi Assistant: same"}, "rejected", "identical"),
    ({"chosen": "Human: hi Assistant:", "rejected": "Human: hi Assistant: no"}, "chosen", "no completion"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [], "rejected": [{"role": "assistant", "content": "x"}]},
     "chosen", "empty message list"),
])
def test_content_problems_follow_on_bad_content(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, row, GOOD])
    report = LoadReport()
    assert len(load_examples(path, report=report)) == 2
    assert len(report.skipped) == 1 and report.skipped[0].startswith(f"d.jsonl:2, field '{field}'")
    assert problem in report.skipped[0] and "1 skipped" in report.summary()
    err = load_error(path, on_bad_content="error")
    assert (err.location, err.field, err.content) == ("d.jsonl:2", field, True)


def test_unpaired_records_errors_and_policy(tmp_path):
    good = {"prompt": "p", "completion": " a", "label": True}
    path = write_jsonl(tmp_path / "u.jsonl", [good, {"prompt": "p", "completion": " ", "label": False}])
    report = LoadReport()
    assert len(load_examples(path, kind="unpaired", report=report)) == 1 and len(report.skipped) == 1
    for bad, field in (({"prompt": "p", "completion": " a", "label": 0.5}, "label"),
                       ({"prompt": "p", "completion": " a"}, "label"),
                       ({"prompt": "p", "completion": None, "label": 1}, "completion")):
        err = load_error(write_jsonl(tmp_path / "b.jsonl", [good, bad]), kind="unpaired")
        assert (err.location, err.field) == ("b.jsonl:2", field)


def test_all_records_unusable_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " a"}])
    with pytest.raises(DataError, match="no usable records"):
        load_examples(path)


# ---- columns -----------------------------------------------------------------------------------------
def test_extra_columns_policy(tmp_path, caplog):
    rows = [dict(GOOD, id="r1", source="web", system="be brief", weight=1.5),
            dict(GOOD, id="r2", source="web", system="be kind", weight=0.5)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = LoadReport()
    with caplog.at_level("WARNING"):
        examples = load_examples(path, report=report)
    assert [e.extras for e in examples] == [{"weight": 1.5}, {"weight": 0.5}]  # numeric columns travel
    assert report.ignored_columns == {"system": 2}  # known metadata (id, source) is dropped quietly
    assert "system (2 records)" in caplog.text and "on_extra_columns" in caplog.text
    err = load_error(path, on_extra_columns="error")
    assert (err.location, err.field) == ("d.jsonl:1", "system") and "on_extra_columns: ignore" in str(err)
    with pytest.raises(ValueError, match="on_extra_columns"):
        load_examples(path, on_extra_columns="drop")


def test_numeric_columns_must_be_present_everywhere(tmp_path):
    """A numeric column missing from one record would otherwise stop training at the first batch
    that mixes it with others: it is refused at load, naming the record."""
    rows = [dict(GOOD, weight=1.0), dict(GOOD, weight=2.0), dict(GOOD), dict(GOOD, weight=[1.0, 2.0])]
    err = load_error(write_jsonl(tmp_path / "d.jsonl", rows[:3]))
    assert (err.location, err.field) == ("d.jsonl:3", "weight") and "missing here" in str(err)
    err = load_error(write_jsonl(tmp_path / "e.jsonl", [rows[0], rows[3]]))
    assert (err.location, err.field) == ("e.jsonl:2", "weight") and "different shape" in str(err)


def test_csv_numeric_columns_travel_as_extras(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected,weight,note\np, 1, 2,0.5,hi\nq, 3, 4,2,\n")
    a, b = load_examples(str(tmp_path / "d.csv"))
    assert (a.chosen, a.rejected, a.extras, b.extras) == (" 1", " 2", {"weight": 0.5}, {"weight": 2.0})


# ---- tokenization: a prompt alone longer than max_length ------------------------------------------
def test_prompt_longer_than_max_length(tmp_path, tokenizer, caplog):
    long_prompt = "Question: " + "the cat sat on a mat " * 20 + "\nAnswer:"
    path = write_jsonl(tmp_path / "d.jsonl", [dict(GOOD, prompt="Question: hi\nAnswer:"),
                                               dict(GOOD, prompt=long_prompt)])
    examples = load_examples(path)
    with caplog.at_level("WARNING"):
        kept, report = tokenize_examples(examples, tokenizer, max_length=24)
    assert len(kept) == 1 and report.dropped == ["d.jsonl:2"] and "dropped 1 example" in caplog.text
    with pytest.raises(DataError) as info:
        tokenize_examples(examples, tokenizer, max_length=24, on_empty_completion="error")
    assert (info.value.location, info.value.field) == ("d.jsonl:2", "prompt")
    assert "max_length=24" in str(info.value) and "raise max_length" in str(info.value)


# ---- ranked lists ----------------------------------------------------------------------------------
@pytest.mark.parametrize("record, field, problem", [
    ({"prompt": "p", "responses": [" a"], "scores": [1]}, "responses", "has 1 response"),
    ({"prompt": "p", "responses": [], "scores": []}, "responses", "has 0 response"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, float("nan")]}, "scores", "NaN"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, float("inf")]}, "scores", "inf"),
])
def test_lists_need_two_responses_and_finite_scores(tmp_path, record, field, problem):
    err = load_error(write_jsonl(tmp_path / "l.jsonl", [record]), kind="lists")
    assert (err.location, err.field) == ("l.jsonl:1", field) and problem in str(err)
