"""Shared fixtures and helpers: a tiny tokenizer and Llama model built in-process, small data files
(pairs, ranked lists), a word-level policy with a length judge, and one tiny trained run."""

from __future__ import annotations

import json
import os
import random

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


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


# ---- ranked lists -----------------------------------------------------------------------------------
CLAIMS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "claims"))


def load_claim(name: str):
    """``benchmarks/claims/<name>.py`` as a module (the scripts import their ``common`` module, so the
    folder is on ``sys.path`` while it loads)."""
    import importlib.util
    import sys

    sys.path.insert(0, CLAIMS)
    try:
        spec = importlib.util.spec_from_file_location(f"claim_{name}", os.path.join(CLAIMS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(CLAIMS)


def make_lists(n, seed=0, ks=(2, 3, 4)):
    """Lists of 2-4 responses; the score is the share of 'good' words (WORDS[:10]), so ties occur."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Question: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + "\nAnswer:"
        k = rng.choice(ks)
        responses, scores = [], []
        for _ in range(k):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
            responses.append(" " + " ".join(words))
            scores.append(round(sum(w in WORDS[:10] for w in words) / len(words), 2))
        rows.append({"prompt": prompt, "responses": responses, "scores": scores})
    return rows


@pytest.fixture
def lists_file(tmp_path):
    return write_jsonl(tmp_path / "lists.jsonl", make_lists(24))


def lists_config(model_dir, path, out, **sections):
    data_section = {"kind": "lists", **sections.pop("data", {})}
    return train_config(model_dir, path, out, data=data_section, **sections)


# ---- a word-level policy and a length judge (online rounds, sampling, judges) -------------------------
ONLINE_WORDS = "a b c d e f g h even odd yes no".split()


def length_judge(prompt, response) -> float:
    """Prefers answers of three words: varied scores from an untrained model's samples."""
    return -abs(len(response.split()) - 3)


JUDGE_SPEC = os.path.abspath(__file__) + ":length_judge"  # a judge given as file.py:function


@pytest.fixture(scope="session")
def word_tokenizer():
    from dpokit.tiny import train_tokenizer

    return train_tokenizer([" ".join(ONLINE_WORDS) + " q :"], vocab_size=64, word_level=True)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, word_tokenizer):
    from dpokit.tiny import tiny_llama

    path = tmp_path_factory.mktemp("online-policy")
    model = tiny_llama(len(word_tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                       max_position_embeddings=64, seed=0, tokenizer=word_tokenizer)
    model.save_pretrained(path, safe_serialization=True)
    word_tokenizer.save_pretrained(path)
    return str(path)


# ---- one tiny trained run (eval, report, monitor) ---------------------------------------------------
WORD_COUNT_JUDGE = "def judge(prompt, response):\n    return float(len(response.split()) % 3)\n"


@pytest.fixture(scope="session")
def judge_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "judge.py"
    path.write_text(WORD_COUNT_JUDGE)
    return str(path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir, judge_file):
    """``dpokit train`` for 4 steps with ``train.monitor`` (a judge, sampled answers) and an eval set."""
    import yaml

    from dpokit.cli import main

    root = tmp_path_factory.mktemp("trained")
    train = write_jsonl(root / "pairs.jsonl", make_pairs(24))
    heldout = write_jsonl(root / "heldout.jsonl", make_pairs(12, seed=7))
    raw = train_config(tiny_model_dir, train, root / "run", data={"eval": heldout},
                       train={"max_steps": 4, "eval_every": 2,
                              "monitor": {"judge": f"{judge_file}:judge", "max_new_tokens": 6, "examples": 12}})
    (root / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(root / "c.yaml")]) == 0
    return {"run": str(root / "run"), "heldout": heldout, "root": root}
