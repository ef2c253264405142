"""`model.kind: vlm` end to end: a tiny Llava saved locally trains through the regular trainer (LoRA on the
language model, frozen vision tower) and its final directory loads back with its class and processor."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import from_dict
from dpokit.errors import ConfigError
from dpokit.preflight import check_run
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_vlm_processor
from dpokit.train import Trainer


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava")
    processor = tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    tiny_llava(processor, hidden_size=32, seed=0).save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colour-pairs")
    items = colours.draw_items(16, seed=0)
    wrong = ["green" if c == "red" else "red" for c, _ in items]
    return colours.write_records(colours.pair_records(items, wrong, str(folder), "p"), str(folder / "pairs.jsonl"))


def vlm_config(model_dir, data, out, lora=True, **train):
    return from_dict({
        "model": {"name_or_path": model_dir, "kind": "vlm"},
        "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": data, "max_length": 64},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"output_dir": str(out), "max_steps": 3, "batch_size": 4, "lr": 1e-2, "layout": "prompt_shared",
                  "report_to": [], "progress_bar": False, "mixed_precision": "no", "warmup_steps": 0, **train},
    })


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.slow
def test_lora_vlm_run_trains_the_language_model_and_loads_back(vlm_dir, pairs_file, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    trainer = Trainer(vlm_config(vlm_dir, pairs_file, tmp_path / "run"))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    result = trainer.fit()
    assert result["status"] == "completed" and result["step"] == 3
    final = str(tmp_path / "run" / "final")
    adapter = json.load(open(os.path.join(final, "adapter", "adapter_config.json")))
    assert "language_model" in str(adapter["target_modules"])
    model = AutoModelForImageTextToText.from_pretrained(final)
    processor = AutoProcessor.from_pretrained(final)
    assert isinstance(model, LlavaForConditionalGeneration) and processor.image_processor is not None
    card = open(os.path.join(final, "README.md")).read()
    assert "AutoModelForImageTextToText.from_pretrained" in card and "AutoProcessor" in card
    before, after = weights(vlm_dir), weights(final)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("language_model" in k for k in changed)  # vision tower, projector, head as they were
    image = colours.draw("red", __import__("random").Random(0))
    text = processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    logits = model(**processor(images=[image], text=[text], add_special_tokens=False, return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_full_finetune_keeps_the_vision_tower_frozen(vlm_dir, pairs_file, tmp_path):
    trainer = Trainer(vlm_config(vlm_dir, pairs_file, tmp_path / "run", lora=False, layout="padded"))
    trainer.fit()
    before, after = weights(vlm_dir), weights(str(tmp_path / "run" / "final"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("multi_modal_projector" in k for k in changed) and any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)


def test_preflight_refuses_what_the_vlm_path_does_not_serve(vlm_dir, pairs_file, tmp_path):
    base = {"model": {"name_or_path": vlm_dir, "kind": "vlm"}, "data": {"train": pairs_file},
            "loss": {"name": "dpo"}, "train": {"output_dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match="pairs built from lists would lose their images"):
        check_run(from_dict({**base, "data": {"train": pairs_file, "kind": "lists"}, "loss": {"name": "dpo"}}))
    check_run(from_dict({**base, "reference": {"precompute": True}}))  # served: the cache keeps the images
    check_run(from_dict({**base, "data": {"train": pairs_file, "kind": "lists"}, "loss": {"name": "plackett_luce"}}))
    with pytest.raises(ConfigError, match="model.kind"):
        from_dict({**base, "model": {"name_or_path": vlm_dir, "kind": "vision"}})
    with pytest.raises(ConfigError, match="train.projection: 'liger' is not served for model.kind: vlm"):
        check_run(from_dict({**base, "train": {"output_dir": str(tmp_path), "projection": "liger"}}))


def test_a_model_directory_without_a_processor_is_a_config_error(tmp_path, pairs_file):
    processor = tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    tiny_llava(processor, hidden_size=32).save_pretrained(tmp_path / "m", safe_serialization=True)
    processor.tokenizer.save_pretrained(tmp_path / "m")  # the tokenizer only
    with pytest.raises(ConfigError, match="model.name_or_path: cannot load .*(image processor|processor)"):
        Trainer(vlm_config(str(tmp_path / "m"), pairs_file, tmp_path / "run"))


@pytest.mark.slow
def test_a_qwen2_vl_run_trains_with_lora_and_loads_back(pairs_file, tmp_path):
    """A tiny Qwen2-VL saved locally (tokenizer + Qwen2-VL image processor, no torchvision) trains through the
    trainer (M-RoPE positions under prompt sharing) and its final directory loads back."""
    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    from dpokit.models import load_processor
    from dpokit.tiny import tiny_qwen2_vl, tiny_qwen2_vl_processor

    processor = tiny_qwen2_vl_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    model_dir = str(tmp_path / "tiny-qwen2-vl")
    tiny_qwen2_vl(processor, seed=0).save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    trainer = Trainer(vlm_config(model_dir, pairs_file, tmp_path / "run"))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    assert trainer.fit()["status"] == "completed"
    final = str(tmp_path / "run" / "final")
    loaded = AutoModelForImageTextToText.from_pretrained(final)
    assert isinstance(loaded, Qwen2VLForConditionalGeneration)
    before, after = weights(model_dir), weights(final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Qwen2-VL saves its language model as model.layers.* and its vision tower as visual.*
    assert changed and all(k.startswith("model.layers.") for k in changed)
    assert any(k.startswith("visual.") for k in before)
    loaded_processor = load_processor(final)
    text = loaded_processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    image = colours.draw("red", __import__("random").Random(0))
    inputs = loaded_processor(images=[image], text=[text], add_special_tokens=False, return_tensors="pt")
    assert torch.isfinite(loaded(**inputs).logits).all()
