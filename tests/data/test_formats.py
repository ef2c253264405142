import json
import os

import pytest

from dpokit.data import DataError, LoadReport, implicit_prompt, load_examples, split_pairs
from dpokit.data.formats import iter_records

from conftest import HH_PATH, write_jsonl


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


@pytest.mark.skipif(not os.path.exists(HH_PATH), reason="shared HH-RLHF sample not found next to the repository")
def test_hh_rlhf_sample_parses_and_reports_unusable_rows():
    report = LoadReport()
    examples = load_examples(HH_PATH, report=report)
    assert report.records == 1600
    assert len(examples) + len(report.skipped) == 1600
    assert all("hh-rlhf-harmless-1600.jsonl:" in s for s in report.skipped)
    assert all(ex.prompt.endswith("Assistant:") for ex in examples)
    with pytest.raises(DataError, match=r"hh-rlhf-harmless-1600.jsonl:54, field 'chosen'"):
        load_examples(HH_PATH, on_bad_content="error")


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
