"""Tiny in-process models and prompts for the online tests (word-level tokenizer, 2-layer Llama)."""

from __future__ import annotations

import os

import pytest
import torch

WORDS = "a b c d e f g h even odd yes no".split()


def length_judge(prompt, response) -> float:
    """Prefers answers of three words: varied scores from an untrained model's samples."""
    return -abs(len(response.split()) - 3)


@pytest.fixture(scope="session")
def word_tokenizer():
    from dpokit.tiny import train_tokenizer

    return train_tokenizer([" ".join(WORDS) + " q :"], vocab_size=64, word_level=True)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, word_tokenizer):
    from dpokit.tiny import tiny_llama

    path = tmp_path_factory.mktemp("online-policy")
    model = tiny_llama(len(word_tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                       max_position_embeddings=64, seed=0, tokenizer=word_tokenizer)
    model.save_pretrained(path, safe_serialization=True)
    word_tokenizer.save_pretrained(path)
    return str(path)


JUDGE_SPEC = os.path.abspath(__file__) + ":length_judge"  # a judge given as file.py:function
PROMPTS = [f"q {x} {y} :" for x in "abcd" for y in "efgh"]


def online_raw(policy_dir, output_dir, strategy="online_dpo", **online):
    raw = {
        "model": {"name_or_path": policy_dir, "dtype": "float32"},
        "data": {"max_length": 32},
        "loss": {"name": "dpo", "beta": 0.5},
        "train": {"output_dir": str(output_dir), "lr": 5e-3, "batch_size": 4, "epochs": 1, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant",
                  "seed": 0},
        "online": {"strategy": strategy, "rounds": 2, "prompts_per_round": 8, "samples_per_prompt": 3,
                   "max_new_tokens": 5, "generation_batch_size": 8,
                   "judge": {"kind": "callable", "function": JUDGE_SPEC}},
    }
    raw["online"].update(online)
    return raw


@pytest.fixture
def prompts_file(tmp_path):
    import json

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b, atol=1e-6):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)
