"""Context-aware reward model: the context column conditions the model; reversed contexts measure it."""

import json
import random

import pytest
import torch

from dpokit.errors import DataError
from dpokit.preference.context import context_sensitivity, load_context_pairs

WORDS = "good fine nice great bad awful poor ugly the a is it prefer positive negative words".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpokit.tiny import train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS) + " Context: :"], vocab_size=64, word_level=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ctx-init")
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    rng = random.Random(0)
    pos, neg = "prefer positive words", "prefer negative words"
    rows = []
    for i in range(64):  # the same kind of pair, labelled by the context: positive words win under `pos`
        good, bad = " " + rng.choice(WORDS[:4]), " " + rng.choice(WORDS[4:8])
        if i % 2:
            rows.append({"prompt": "it is", "chosen": good, "rejected": bad, "context": pos, "reversed": neg})
        else:
            rows.append({"prompt": "it is", "chosen": bad, "rejected": good, "context": neg, "reversed": pos})
    data = tmp_path_factory.mktemp("ctx-data") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), str(data)


def test_context_column_of_wrong_type_names_file_and_line(tmp_path, capsys):
    from dpokit.cli import main

    path = tmp_path / "ctx.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "context": "c"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "context": 3}) + "\n")
    with pytest.raises(DataError, match=r"ctx.jsonl:2, field 'context': must be a non-empty string"):
        load_context_pairs(str(path), "context")
    with pytest.raises(DataError, match=r"ctx.jsonl:1, field 'other': is missing"):
        load_context_pairs(str(path), "other")
    assert main(["train-rm", "--model", "unused", "--data", str(path), "--output-dir", str(tmp_path / "o"),
                 "--context-column", "context"]) == 2
    assert "ctx.jsonl:2, field 'context'" in capsys.readouterr().err


def test_context_sensitivity_by_hand():
    m = context_sensitivity([0.9, 0.8, 0.2, 0.6], [0.1, 0.7, 0.9, 0.6])
    assert m == {"accuracy_context": 0.75, "accuracy_reversed": 0.75, "both_correct": 0.5}


def test_context_aware_model_follows_reversed_contexts_a_context_free_one_cannot(setup, tmp_path, capsys):
    from dpokit.cli import main

    init, data = setup
    common = ["--model", init, "--data", data, "--epochs", "6", "--lr", "3e-3", "--batch-size", "8"]
    assert main(["train-rm", *common, "--output-dir", str(tmp_path / "carm"), "--context-column", "context"]) == 0
    assert main(["train-rm", *common, "--output-dir", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    reports = {}
    for name in ("carm", "plain"):
        assert main(["eval-rm", "--model", str(tmp_path / name), "--data", data, "--context-column", "context",
                     "--reversed-context-column", "reversed"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)["context_sensitivity"]
    assert reports["carm"]["both_correct"] >= 0.9
    assert reports["plain"]["both_correct"] <= 0.1  # the same score under both contexts: one side is wrong
