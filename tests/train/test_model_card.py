"""final/README.md: a Hugging Face model card that parses (YAML front matter, huggingface_hub's
ModelCard) and says what was trained, on what, how, with which results, and how to load it."""

import json
import os

import pytest
import yaml

from dpokit.config import from_dict
from dpokit.train.model_card import is_hub_id, write_model_card

from conftest import train_config


def front_matter(text):
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


RECORDS = [
    {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.0, "lr": 1e-6, "epoch": 0.5},
    {"step": 2, "loss": 0.41, "rewards/accuracies": 0.75, "rewards/margins": 0.31, "grad_norm": 1.5, "lr": 5e-7,
     "epoch": 1.0, "logps/chosen": -20.5},
    {"step": 2, "eval/loss": 0.52, "eval/rewards/accuracies": 0.625, "eval/rewards/margins": 0.2},
]


def hub_config(tmp_path, **sections):
    raw = train_config("Qwen/Qwen2.5-0.5B-Instruct", "trl-lib/ultrafeedback_binarized", tmp_path / "run",
                       loss={"name": "dpo + 0.2*sft", "beta": 0.05}, **sections)
    raw["data"]["eval"] = "trl-lib/ultrafeedback_binarized"
    raw["data"]["split"] = "train"
    return from_dict(raw)


def test_card_front_matter_is_valid_yaml_and_the_hub_reads_it(tmp_path):
    from huggingface_hub import ModelCard

    final = tmp_path / "run" / "final"
    path = write_model_card(str(final), hub_config(tmp_path), metrics=RECORDS,
                            eval_summary={"preference_accuracy": 0.71, "kl": 3.2, "num_pairs": 64},
                            num_examples={"train": 1200, "eval": 64})
    assert path == str(final / "README.md")
    text = open(path).read()
    meta, body = front_matter(text)
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"]
    assert {"dpokit", "dpo", "sft"} <= set(meta["tags"]) and "lora" not in meta["tags"]
    assert "license" not in meta  # not known for a hub model without its card at hand
    card = ModelCard.load(path)
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and card.data.library_name == "transformers"
    for section in ("## Base model", "## Data", "## Loss", "## Training hyperparameters", "## Final metrics",
                    "## Evaluation", "## How to load"):
        assert section in body, section
    assert "| train | [trl-lib/ultrafeedback_binarized](https://huggingface.co/datasets/trl-lib/ultrafeedback_binarized)" \
           " (split `train`) | 1200 |" in body
    assert "`dpo`" in body and "0.2 x `sft`" in body and "`beta` = 0.05" in body
    assert "| `train.lr` | 0.01 |" in body and "| `train.batch_size` | 4 |" in body
    # the last training line (step 2) and the last eval line
    assert "| `loss` | 0.41 | 0.52 |" in body and "| `rewards/accuracies` | 0.75 | 0.625 |" in body
    assert "| `grad_norm` | 1.5 |  |" in body
    assert "| `preference_accuracy` | 0.71 |" in body and "| `kl` | 3.2 |" in body
    assert "AutoModelForCausalLM.from_pretrained" in body and "adapter" not in body


def test_a_local_base_model_stays_out_of_the_metadata(tmp_path, tiny_model_dir):
    from huggingface_hub import ModelCard

    with open(os.path.join(tiny_model_dir, "README.md"), "w") as handle:  # the base model's own card
        handle.write("---\nlicense: apache-2.0\n---\n# tiny\n")
    try:
        raw = train_config(tiny_model_dir, str(tmp_path / "pairs.jsonl"), tmp_path / "run",
                           lora={"enabled": True, "r": 4})
        path = write_model_card(str(tmp_path / "run" / "final"), from_dict(raw))
    finally:
        os.remove(os.path.join(tiny_model_dir, "README.md"))
    text = open(path).read()
    meta, body = front_matter(text)
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["license"] == "apache-2.0" and "lora" in meta["tags"]
    assert tiny_model_dir in body  # the local path is named in the text
    assert "## Final metrics" not in body and "## Evaluation" not in body  # no metrics.jsonl, no eval.json
    assert 'PeftModel.from_pretrained(base, "path/to/final/adapter")' in body and "`pairs.jsonl` (local file)" in body
    assert ModelCard.load(path).data.to_dict().get("base_model") is None


def test_metrics_and_eval_json_are_read_from_the_run_directory(tmp_path):
    run = tmp_path / "run"
    os.makedirs(run)
    with open(run / "metrics.jsonl", "w") as handle:
        for record in RECORDS:
            handle.write(json.dumps(record) + "\n")
        handle.write('{"step": 3, "loss": 0.3')  # a torn last line
    (run / "eval.json").write_text(json.dumps({"preference_accuracy": 0.8, "margins": [1, 2]}))
    path = write_model_card(str(run / "final"), hub_config(tmp_path))
    _, body = front_matter(open(path).read())
    assert "From `metrics.jsonl`: training at step 2, evaluation at step 2." in body
    assert "| `preference_accuracy` | 0.8 |" in body and "`margins`" not in body  # lists are not shown


@pytest.mark.parametrize("value, expected", [
    ("Qwen/Qwen2.5-0.5B", True), ("gpt2", True), ("org/name.v2", True), ("/abs/path", False),
    ("./model", False), ("a/b/c", False), ("pairs.jsonl", False), ("", False), (None, False), ("org/../x", False),
])
def test_hub_ids(value, expected):
    assert is_hub_id(value) is expected


def test_a_real_run_directory_gets_a_card(tmp_path, tiny_model_dir, pairs_file):
    """The call the final export makes, on a short real run."""
    from dpokit.train import Trainer

    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"max_steps": 2})
    trainer = Trainer(from_dict(raw))
    trainer.fit()
    final = str(tmp_path / "run" / "final")
    path = write_model_card(final, trainer.config, num_examples={"train": len(trainer.train_examples)})
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    assert "dpo" in card.data.tags and "| train | `pairs.jsonl` (local file) | 32 |" in card.text
    assert "From `metrics.jsonl`: training at step 2." in card.text
    last = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert f"| `loss` | {last['loss']:.6g} |" in card.text
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)  # the card does not disturb loading


def test_a_reference_free_loss_says_so(tmp_path):
    raw = train_config("gpt2", "org/pairs", tmp_path / "run", loss={"name": "simpo"})
    _, body = front_matter(open(write_model_card(str(tmp_path / "run" / "final"), from_dict(raw))).read())
    assert "Reference model: none (the loss is reference-free)." in body and "`simpo`" in body
