"""Shared fixtures: a tiny tokenizer and Llama model built in-process, and small data files."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH_PATH = os.path.join(REPO, "..", "shared", "data", "hh-rlhf-harmless-1600.jsonl")

WORDS = ("the cat dog sat ran on a mat log red blue green big small happy sad yes no good bad "
         "please thanks hello world answer question why how what when").split()


def make_pairs(n: int, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = "Question: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "\nAnswer:"
        chosen = " " + " ".join(rng.choice(WORDS[:10]) for _ in range(rng.randint(1, 5)))
        rejected = " " + " ".join(rng.choice(WORDS[10:]) for _ in range(rng.randint(1, 6)))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer():
    from dpokit.tiny import train_tokenizer

    corpus = [r["prompt"] + r["chosen"] + r["rejected"] for r in make_pairs(200, seed=1)]
    return train_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama saved with save_pretrained (safetensors) + its tokenizer: a real local model path."""
    from dpokit.tiny import tiny_llama

    path = tmp_path_factory.mktemp("tiny-model")
    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, tokenizer=tokenizer, seed=0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_model(tokenizer):
    from dpokit.tiny import tiny_llama

    return tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, tokenizer=tokenizer, seed=0)


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32))


def train_config(model_dir, data_path, output_dir, **sections):
    """A small, fast training config as a dict (sections override the defaults)."""
    raw = {
        "model": {"name_or_path": model_dir, "dtype": "float32"},
        "data": {"train": data_path, "max_length": 64},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"output_dir": str(output_dir), "lr": 1e-2, "batch_size": 4, "epochs": 1, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant"},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    return raw
