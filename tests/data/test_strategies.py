"""PUGC and MAPL data construction on tiny inputs."""

from __future__ import annotations

import pytest

from dpokit.data import load_examples
from dpokit.data import mapl, pugc
from dpokit.errors import DataError
from dpokit.preference.judges import CallableJudge, build_judge
from tests.conftest import read_jsonl, write_jsonl

NOTES = ["to get 37 x 4 , do 37 x 2 x 2 = 148", "to get 12 x 5 , do 12 x 10 / 2 = 60",
         "to get 9 x 9 , do 9 x 10 - 9 = 81", "shopping list : eggs milk bread"]


def arithmetic_query(note):
    """The miniature's question generator: 'what is A x B ?' from 'to get A x B , ...'."""
    words = note.split()
    return f"what is {words[2]} x {words[4]} ?" if words[:2] == ["to", "get"] else None


def fake_policy(prompts, n):
    """Answers: the note's result, a wrong number, a long rambling one, and an empty one."""
    out = []
    for p in prompts:
        a, b = int(p.split()[2]), int(p.split()[4])
        out.append([f"{a * b}", f"{a + b}", "i am not sure what the answer is " * 3, ""][:n])
    return out


def test_reference_f1_matches_hand_count():
    prompt = pugc.reference_prompt("a b b c", "q ?")
    assert pugc.split_reference_prompt(prompt) == ("a b b c", "q ?")
    # response "b b d": common 2 (b, b); precision 2/3, recall 2/4 -> F1 = 4/7
    assert pugc.reference_f1(prompt, "b b d") == pytest.approx(4 / 7)
    assert pugc.reference_f1(prompt, "") == 0.0 and pugc.reference_f1(prompt, "z") == 0.0
    with pytest.raises(ValueError, match="reference_prompt"):
        pugc.reference_f1("plain prompt", "a")
    assert build_judge("dpokit.data.pugc:reference_f1").score([prompt], ["a b"]) == [pytest.approx(2 / 3)]


def test_pugc_pipeline_pairs_and_report(tmp_path):
    seen = []

    def judge_fn(prompt, response):
        seen.append(prompt)
        return pugc.reference_f1(prompt, response)

    keep = pugc.terms_in_document(ignore=("what", "is", "?"))
    rows, report = pugc.build_pugc_pairs(NOTES + ["to get 7 x 3 , see the table"], arithmetic_query, fake_policy,
                                         CallableJudge(judge_fn), keep=keep, samples=4)
    assert report.documents == 5 and report.no_query == 1  # the shopping list
    assert report.filtered == 0 and report.pairs == 4
    first = rows[0]
    assert first["prompt"] == "what is 37 x 4 ?" and first["chosen"] == "148" and first["document"] == 0
    assert first["score_chosen"] > first["score_rejected"]
    assert all(p.startswith(pugc.REFERENCE_HEADER) for p in seen)  # the judge saw the document
    # length control drops pairs whose rambling answer is rejected against a one-word answer
    _, controlled = pugc.build_pugc_pairs(NOTES, arithmetic_query, fake_policy, build_judge(pugc.reference_f1),
                                          samples=4, max_length_ratio=3)
    assert controlled.length_controlled + controlled.pairs + controlled.tied == 3
    path = pugc.write_pugc_pairs(str(tmp_path / "pugc.jsonl"), rows)
    pairs = load_examples(path, "pairs")
    assert len(pairs) == 4 and pairs[0].extras["score_chosen"] == first["score_chosen"]


def test_pugc_filter_ties_and_bad_arguments():
    keep = pugc.terms_in_document()
    assert keep("37 x 4", NOTES[0]) and not keep("38 x 4", NOTES[0])
    rows, report = pugc.build_pugc_pairs(NOTES, lambda d: "38 x 4", fake_policy, build_judge(pugc.reference_f1),
                                         keep=keep)
    assert rows == [] and report.filtered == 4 and report.examples_filtered[0] == "38 x 4"
    same = lambda prompts, n: [["x"] * n for _ in prompts]
    rows, report = pugc.build_pugc_pairs(NOTES[:1], arithmetic_query, same, build_judge(pugc.reference_f1))
    assert rows == [] and report.tied == 1
    with pytest.raises(ValueError, match="samples must be at least 2"):
        pugc.build_pugc_pairs(NOTES, arithmetic_query, fake_policy, build_judge(pugc.reference_f1), samples=1)
    with pytest.raises(ValueError, match="generate returned answers for 0 prompts"):
        pugc.build_pugc_pairs(NOTES, arithmetic_query, lambda p, n: [], build_judge(pugc.reference_f1))


RECORDS = [{"prompt": "name a colour", "chosen": "red", "rejected": "I would say that a nice colour is RED " * 3},
           {"prompt": "name a fruit", "chosen": "APPLE", "rejected": "banana"},
           {"prompt": "name a tool", "chosen": "a hammer", "rejected": "spoon"}]


def test_intra_sample_variants_hold_their_relation():
    rows = mapl.intra_sample_variants(RECORDS, per_response=3)
    by_name = {c.name: c for c in mapl.DEFAULT_CONSTRAINTS}
    assert rows
    for row in rows:
        assert by_name[row["constraint_chosen"]].check(row["response"])
        assert not by_name[row["constraint_rejected"]].check(row["response"])
        prompt = RECORDS[row["source_index"]]["prompt"]
        assert row["prompt_chosen"] == f"{prompt} {by_name[row['constraint_chosen']].instruction}"
    # "red": satisfies max_words_10 and lowercase, violates min_words_20 and uppercase -> 4 combinations, 3 kept
    assert sum(r["response"] == "red" for r in rows) == 3
    assert mapl.intra_sample_variants(RECORDS, per_response=2, seed=1) != [] and \
        len(mapl.intra_sample_variants(RECORDS, per_response=1)) == 6


def test_inter_sample_pairs_compose_two_records(tmp_path):
    rows = mapl.inter_sample_pairs(RECORDS, pairs_per_record=2, seed=0)
    assert len(rows) == 6
    for row in rows:
        i, j = row["source_indices"]
        assert i != j and row["prompt"] == f"1. {RECORDS[i]['prompt']}\n2. {RECORDS[j]['prompt']}"
        assert row["chosen"] == f" 1. {RECORDS[i]['chosen']}\n\n2. {RECORDS[j]['chosen']}"
        parts = row["rejected"][len(" 1. "):].split("\n\n2. ")
        assert (parts == [RECORDS[i]["chosen"], RECORDS[j]["rejected"].strip()]
                or parts == [RECORDS[i]["rejected"].strip(), RECORDS[j]["chosen"]])
    path = write_jsonl(tmp_path / "mapl.jsonl", [{k: v for k, v in r.items() if k != "source_indices"} for r in rows])
    assert len(load_examples(path, "pairs")) == 6  # ordinary pairs any pairwise loss reads
    with pytest.raises(ValueError, match="compose two records"):
        mapl.inter_sample_pairs(RECORDS[:1])


def test_mapl_bad_records_name_location_and_field(tmp_path):
    with pytest.raises(DataError, match=r"record 1, field 'chosen'"):
        mapl.inter_sample_pairs([RECORDS[0], {"prompt": "p", "chosen": 3, "rejected": "x"}])
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2, field 'rejected'"):
        mapl.read_text_pairs(str(path))
    records, locations = mapl.read_text_pairs(write_jsonl(tmp_path / "ok.jsonl", RECORDS))
    assert records == RECORDS and locations[2] == "ok.jsonl:3"
