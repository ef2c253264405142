"""The benchmark's data: generated pairs (deterministic, HH-shaped) or a file given with --data."""

from statistics import mean

import pytest

from dpokit.bench.data import GENERATED_PAIRS, generated_pairs, load_benchmark_data
from conftest import make_pairs, write_jsonl

MARK = "\n\nAssistant:"


def split(row):
    cut = row["chosen"].rfind(MARK) + len(MARK)
    return row["chosen"][:cut], row["chosen"][cut:], row["rejected"][cut:]


def test_generated_pairs_are_deterministic():
    assert generated_pairs(60, seed=3) == generated_pairs(60, seed=3)
    assert generated_pairs(60, seed=3) != generated_pairs(60, seed=4)
    assert generated_pairs(20, seed=3) == generated_pairs(60, seed=3)[:20]


def test_generated_pairs_share_a_dialogue_prompt():
    for row in generated_pairs(200, seed=0):
        prompt, chosen, rejected = split(row)
        assert row["rejected"].startswith(prompt)
        assert prompt.startswith("\n\nHuman: ") and prompt.endswith(MARK)
        assert prompt.count("\n\nHuman: ") == prompt.count(MARK)
        assert chosen.startswith(" ") and chosen.strip() and rejected.strip()
        assert chosen != rejected


def test_generated_lengths_are_those_of_hh_dialogues():
    # The HH-RLHF harmless sample: prompts of 86 words on average (median 64), completions of 35
    # (median 23), 29% single-turn prompts, a long tail of multi-turn ones.
    rows = generated_pairs(GENERATED_PAIRS, seed=0)
    prompts = [len(split(r)[0].split()) for r in rows]
    completions = [len(c.split()) for r in rows for c in split(r)[1:]]
    turns = [split(r)[0].count("Human:") for r in rows]
    assert 70 <= mean(prompts) <= 105
    assert 28 <= mean(completions) <= 45
    assert 0.2 <= sum(t == 1 for t in turns) / len(turns) <= 0.4
    assert max(turns) >= 5 and max(prompts) > 4 * mean(prompts)


def test_default_data_is_generated():
    examples, source = load_benchmark_data(None, seed=0)
    assert len(examples) == GENERATED_PAIRS
    assert source == f"generated ({GENERATED_PAIRS} HH-style pairs, seed 0)"
    assert examples[0].prompt.endswith(MARK)


def test_data_from_a_file(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(12))
    examples, source = load_benchmark_data(path, seed=0)
    assert len(examples) == 12 and source == path


def test_missing_data_file_is_named(tmp_path):
    missing = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_benchmark_data(missing, seed=0)
