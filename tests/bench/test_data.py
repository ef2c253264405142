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


def tokenized_stream(n=30, seed=0):
    from dpokit.data.tokenize import TokenizedExample

    rng = __import__("random").Random(seed)
    return [TokenizedExample(i, [1] + [rng.randrange(4, 300) for _ in range(rng.randrange(3, 20))],
                             [[rng.randrange(4, 300) for _ in range(rng.randrange(1, 9))] for _ in range(2)])
            for i in range(n)]


def test_long_pairs_have_exactly_the_requested_lengths():
    import random

    from dpokit.bench.data import long_pairs

    examples = tokenized_stream()
    groups = long_pairs(examples, 5, length=64, completion_length=8, bos=1, rng=random.Random(0))
    assert [g[0] for g in groups] == list(range(5))
    stream_tokens = {t for ex in examples for t in ex.prompt_ids[1:] + ex.completions[0]}
    for _, prompt, (chosen, rejected) in groups:
        assert len(prompt) + len(chosen) == 64 and len(prompt) + len(rejected) == 64
        assert len(chosen) == len(rejected) == 8 and chosen != rejected
        assert prompt[0] == 1 and 1 not in prompt[1:]  # one BOS, first; inner BOS tokens dropped
        assert set(prompt[1:]) | set(chosen) | set(rejected) <= stream_tokens
    again = long_pairs(examples, 5, length=64, completion_length=8, bos=1, rng=random.Random(0))
    assert again == groups


@pytest.mark.parametrize("length, completion, message", [(64, 0, "completion-length"), (64, 64, "completion-length"),
                                                          (4096, 512, "too few")])
def test_long_pairs_refuse_impossible_lengths(length, completion, message):
    import random

    from dpokit.bench.data import long_pairs

    with pytest.raises(ValueError, match=message):
        long_pairs(tokenized_stream(), 1, length, completion, bos=1, rng=random.Random(0))
