"""Reading preference data (dpokit.data.formats): formats, implicit prompts, ranked lists, and errors
that name the file, line and field."""

import json
import os
import re

import pytest

from dpokit.data import DataError, LoadReport, implicit_prompt, load_examples, split_pairs
from dpokit.data.formats import iter_records

from conftest import write_jsonl


def test_explicit_prompt_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q?", "chosen": " yes", "rejected": " no", "weight": 2}])
    [ex] = load_examples(path)
    assert (ex.prompt, ex.chosen, ex.rejected) == ("Q?", " yes", " no")
    assert ex.extras == {"weight": 2.0}
    assert ex.location == "d.jsonl:1"


def test_implicit_prompt_cuts_at_last_assistant_marker():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: Sure, here it is"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: Sure, no"
    prompt, c, r = implicit_prompt(chosen, rejected)
    assert prompt.endswith("\n\nAssistant:") and prompt.count("Assistant:") == 2
    assert c == " Sure, here it is" and r == " Sure, no"
    assert prompt + c == chosen


def test_implicit_prompt_without_marker_uses_common_prefix():
    assert implicit_prompt("abcX", "abcY") == ("abc", "X", "Y")


HH_TURNS = [
    ("How do I get a stain out of a rug?", "Blot it with cold water and a little dish soap."),
    ("What if it is red wine?", "Cover it with salt first, then blot."),
    ("And an old one?", "Try a paste of baking soda and vinegar."),
]
HH_BAD_LINES = (4, 11)  # the chosen answer is empty: nothing follows the last "Assistant:"


def hh_rows(n):
    """HH-RLHF style records: multi-turn dialogues that share every turn but the last answer."""
    rows = []
    for i in range(n):
        turns = HH_TURNS[: 1 + i % len(HH_TURNS)]
        history = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in turns[:-1])
        prefix = f"{history}\n\nHuman: {turns[-1][0]} (case {i})\n\nAssistant:"
        chosen = "" if i + 1 in HH_BAD_LINES else f" {turns[-1][1]}"
        rows.append({"chosen": prefix + chosen, "rejected": prefix + f" I won't help with rug {i}."})
    return rows


def test_hh_rlhf_format_parses_and_reports_unusable_rows(tmp_path):
    rows = hh_rows(24)
    path = write_jsonl(tmp_path / "hh-rlhf-sample.jsonl", rows)
    report = LoadReport()
    examples = load_examples(path, report=report)
    assert report.records == 24
    assert len(examples) == 24 - len(HH_BAD_LINES) and len(report.skipped) == len(HH_BAD_LINES)
    assert [s.split(",")[0] for s in report.skipped] == [f"hh-rlhf-sample.jsonl:{n}" for n in HH_BAD_LINES]
    assert all("field 'chosen'" in s for s in report.skipped)
    good = [row for n, row in enumerate(rows, 1) if n not in HH_BAD_LINES]
    for ex, row in zip(examples, good):
        assert ex.prompt.endswith("\n\nAssistant:") and ex.prompt + ex.chosen == row["chosen"]
        assert ex.prompt + ex.rejected == row["rejected"]
        assert ex.prompt.count("Assistant:") == row["chosen"].count("Assistant:")  # every turn stays in the prompt
    assert {ex.prompt.count("Human:") for ex in examples} == {1, 2, 3}
    with pytest.raises(DataError, match=rf"hh-rlhf-sample.jsonl:{HH_BAD_LINES[0]}, field 'chosen'"):
        load_examples(path, on_bad_content="error")


HH_RLHF_FILE = os.environ.get("DPOKIT_HH_RLHF_FILE")


@pytest.mark.skipif(not HH_RLHF_FILE, reason="opt-in check on real HH-RLHF data: set DPOKIT_HH_RLHF_FILE to a "
                    "local HH-RLHF JSONL file (test_hh_rlhf_format_parses_and_reports_unusable_rows covers the format)")
def test_real_hh_rlhf_file_parses_and_reports_unusable_rows():
    """The same checks on a real HH-RLHF file, whose text is messier than the synthetic rows."""
    with open(HH_RLHF_FILE, encoding="utf-8") as handle:
        lines = sum(1 for line in handle if line.strip())
    report = LoadReport()
    examples = load_examples(HH_RLHF_FILE, report=report)
    assert report.records == lines and len(examples) + len(report.skipped) == lines
    assert len(examples) > 0.9 * lines
    name = os.path.basename(HH_RLHF_FILE)
    assert all(s.startswith(f"{name}:") for s in report.skipped)
    assert all(ex.prompt.endswith("Assistant:") for ex in examples)
    if report.skipped:  # "error" stops at the first row "skip" skipped, and names it
        first = report.skipped[0].split(",")[0]  # FILE:LINE
        with pytest.raises(DataError, match=re.escape(first + ",")):
            load_examples(HH_RLHF_FILE, on_bad_content="error")


def test_conversational_explicit_and_implicit(tmp_path):
    user = {"role": "user", "content": "hi"}
    good = {"role": "assistant", "content": "hello!"}
    bad = {"role": "assistant", "content": "go away"}
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": [user], "chosen": [good], "rejected": [bad]},
        {"chosen": [user, good], "rejected": [user, bad]},
    ])
    a, b = load_examples(path)
    assert a.prompt == [user] and a.chosen == [good]
    assert b.prompt == [user] and b.chosen == [good] and b.rejected == [bad]


def test_json_parquet_csv_and_dataset(tmp_path):
    rows = [{"prompt": "p1", "chosen": " a", "rejected": " b"}, {"prompt": "p2", "chosen": " c", "rejected": " d"}]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\np1, a, b\np2, c, d\n")
    import datasets

    for source in (str(json_path), str(tmp_path / "d.parquet"), str(tmp_path / "d.csv"),
                   datasets.Dataset.from_list(rows)):
        examples = load_examples(source)
        assert [e.prompt for e in examples] == ["p1", "p2"]
        assert examples[1].rejected.strip() == "d"


@pytest.mark.parametrize("line, field, problem", [
    ('{"prompt": "p", "chosen": "a"', None, "invalid JSON"),
    ('{"prompt": "p", "chosen": " a"}', "rejected", "is missing"),
    ('{"prompt": "p", "chosen": 3, "rejected": " b"}', "chosen", "must be a string or a list of messages"),
    ('{"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": " b"}', "chosen", "'role' and 'content'"),
    ('[1, 2]', None, "expected a JSON object"),
    ('{"prompt": "p", "chosen": " a", "rejected": " b", "w": NaN}', "w", "is nan"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, line, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": " a", "rejected": " b"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    err = info.value
    assert err.location == "bad.jsonl:2"
    assert err.field == field
    assert problem in str(err)


def test_non_utf8_is_reported_with_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": " a", "rejected": " b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"bin.jsonl:2: not valid UTF-8"):
        load_examples(str(path))


def test_identical_pair_is_skipped_and_counted_or_fails(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " a"},
                                               {"prompt": "p", "chosen": " a", "rejected": " b"}])
    report = LoadReport()
    assert len(load_examples(path, report=report)) == 1
    assert len(report.skipped) == 1 and "d.jsonl:1, field 'rejected': is identical to chosen" in report.skipped[0]
    with pytest.raises(DataError, match="identical"):
        load_examples(path, on_bad_content="error")


def test_unpaired_format_and_split_pairs(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": " a", "label": True},
                                               {"prompt": "p", "completion": " b", "label": 0}])
    a, b = load_examples(path, kind="unpaired")
    assert (a.label, b.label) == (True, False)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": " a", "label": "maybe"}])
    with pytest.raises(DataError, match="bad.jsonl:1, field 'label'"):
        load_examples(bad, kind="unpaired")
    pairs = load_examples(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": " x", "rejected": " y"}]))
    split = split_pairs(pairs)
    assert [(u.completion, u.label) for u in split] == [(" x", True), (" y", False)]
    assert len(load_examples(str(tmp_path / "p.jsonl"), kind="unpaired")) == 2


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_records(str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported data file type"):
        list(iter_records(str(tmp_path / "x.txt")))


# ---- parsing --------------------------------------------------------------------------------------
def test_list_records_parse(tmp_path):
    rows = [
        {"prompt": "p", "responses": [" a", " b", " c"], "scores": [0.5, 2, -1], "weight": 2.0},
        {"prompt": "q", "responses": [" a", " b"], "ranks": [2, 1], "scores_safety": [1, 0],
         "metadata": [{"model": "x"}, {"model": "y"}], "weight": 1},
        {"prompt": "r", "responses": [" a", " b"], "scores": {"help": [1, 0], "safe": [0, 1]}, "weight": 1},
        {"prompt": "s", "chosen": " yes", "rejected": " no", "weight": 1},  # a pair is a two-response list
    ]
    a, b, c, d = load_examples(write_jsonl(tmp_path / "l.jsonl", rows), kind="lists")
    assert a.scores == [0.5, 2.0, -1.0] and a.extras == {"weight": 2.0} and a.location == "l.jsonl:1"
    assert b.ranks == [2.0, 1.0] and b.scores == [-2.0, -1.0] and b.primary == "ranks"
    assert b.objectives == {"safety": [1.0, 0.0]} and b.metadata[1] == {"model": "y"}
    assert c.primary == "help" and c.scores == [1.0, 0.0] and c.objectives == {"safe": [0.0, 1.0]}
    assert d.responses == [" yes", " no"] and d.scores == [1.0, 0.0]


@pytest.mark.parametrize("record, field, problem", [
    ({"prompt": "p", "responses": [" a"], "scores": [1]}, "responses", "has 1 response"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, float("nan")]}, "scores", "entry 1 is NaN"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 2, 3]}, "scores", "has 3 values for 2 responses"),
    ({"prompt": "p", "responses": [" a", " b"], "ranks": [1]}, "ranks", "has 1 values for 2 responses"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 0], "ranks": [1, 2]}, "ranks", "together"),
    ({"prompt": "p", "responses": [" a", " b"]}, "scores", "is missing"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, "x"]}, "scores", "entry 1 must be a number"),
    ({"prompt": "p", "responses": [" a", " b"], "ranks": [0, 1]}, "ranks", "ranks start at 1"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 0], "scores_x": [1]}, "scores_x", "has 1 values"),
    ({"responses": [" a", " b"], "scores": [1, 0]}, "prompt", "is missing"),
    ({"prompt": "p", "responses": [" a", 3], "scores": [1, 0]}, "responses[1]", "must be a string"),
])
def test_list_errors_name_file_line_and_field(tmp_path, record, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "responses": [" a", " b"], "scores": [1, 0]}\n'
                    + __import__("json").dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2, field '{re.escape(field)}'.*{problem}"):
        load_examples(str(path), kind="lists")


def test_list_record_under_pairs_kind_points_to_lists(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "p", "responses": [" a", " b"], "scores": [1, 0]}])
    with pytest.raises(DataError, match="data.kind: lists"):
        load_examples(path)
