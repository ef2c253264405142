"""A tiny reward model (LlamaForSequenceClassification, word-level tokenizer) built in-process and
saved like a hub checkpoint, with 48 pairs whose chosen words are positive and rejected negative."""

import json
import random

import torch

WORDS = "good fine nice great bad awful poor ugly the a is it".split()


def tiny_classifier(tmp_path_factory, name: str, margin=None):
    """(model directory, pairs.jsonl); ``margin`` adds that margin field to every pair."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpokit.tiny import train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)], vocab_size=64, word_level=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"{name}-init")
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        row = {"prompt": "it is",
               "chosen": " " + " ".join(rng.choice(WORDS[:4]) for _ in range(rng.randint(1, 3))),
               "rejected": " " + " ".join(rng.choice(WORDS[4:8]) for _ in range(rng.randint(1, 3)))}
        if margin is not None:
            row["margin"] = margin
        rows.append(row)
    data = tmp_path_factory.mktemp(f"{name}-data") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), str(data)
