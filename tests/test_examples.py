"""Every example config validates, names what a user has (a hub model and a hub dataset), documents its
local override, and trains for two optimizer steps on local stand-ins of its model and data."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import random
import re

import pytest
import yaml

from conftest import REPO, WORDS, write_jsonl

EXAMPLES_DIR = os.path.join(REPO, "examples")
EXAMPLES = sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.yaml")))
ACCELERATE = sorted(glob.glob(os.path.join(EXAMPLES_DIR, "accelerate", "*.yaml")))
LISTS_FILE = "data/ultrafeedback_lists.jsonl"  # written by examples/ultrafeedback_lists.py
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _words(rng, low=2, high=6):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


# ---- local stand-ins, one per data source the examples name, in that source's format ------------------

def hh_rlhf(n, rng):
    """Anthropic/hh-rlhf: implicit prompt, whole dialogues in `chosen` and `rejected`."""
    rows = []
    for i in range(n):
        dialogue = f"\n\nHuman: {_words(rng)}?"
        if i % 3 == 0:  # a multi-turn prompt
            dialogue += f"\n\nAssistant: {_words(rng)}.\n\nHuman: {_words(rng)}?"
        rows.append({"chosen": f"{dialogue}\n\nAssistant: {_words(rng)} good.",
                     "rejected": f"{dialogue}\n\nAssistant: {_words(rng)} bad."})
    return rows


def ultrafeedback_binarized(n, rng):
    """trl-lib/ultrafeedback_binarized: conversational implicit prompt, scores as numeric columns."""
    rows = []
    for _ in range(n):
        user = {"role": "user", "content": _words(rng) + "?"}
        rows.append({"chosen": [user, {"role": "assistant", "content": _words(rng) + " good."}],
                     "rejected": [user, {"role": "assistant", "content": _words(rng) + " bad."}],
                     "score_chosen": float(rng.randint(6, 10)), "score_rejected": float(rng.randint(1, 5))})
    return rows


def kto_mix(n, rng):
    """trl-lib/kto-mix-14k: unpaired, conversational `prompt`/`completion`, boolean `label`."""
    return [{"prompt": [{"role": "user", "content": _words(rng) + "?"}],
             "completion": [{"role": "assistant", "content": _words(rng)}], "label": i % 2 == 0} for i in range(n)]


def ultrafeedback_prompt(n, rng):
    """trl-lib/ultrafeedback-prompt: prompt-only, conversational."""
    return [{"prompt": [{"role": "user", "content": f"{_words(rng)} {i}?"}]} for i in range(n)]


def openbmb_ultrafeedback(n, rng):
    """openbmb/UltraFeedback records (instruction, rated completions), the input of ultrafeedback_lists.py."""
    return [{"source": "test", "instruction": _words(rng) + "?", "models": ["a", "b", "c", "d"],
             "completions": [{"model": m, "response": _words(rng), "overall_score": float(rng.randint(1, 10)),
                              "fine-grained_score": 3.0} for m in "abcd"]} for _ in range(n)]


STAND_INS = {
    "Anthropic/hh-rlhf": hh_rlhf,
    "trl-lib/ultrafeedback_binarized": ultrafeedback_binarized,
    "trl-lib/kto-mix-14k": kto_mix,
    "trl-lib/ultrafeedback-prompt": ultrafeedback_prompt,
}


def load_converter():
    spec = importlib.util.spec_from_file_location("ultrafeedback_lists", os.path.join(EXAMPLES_DIR, "ultrafeedback_lists.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def data_source(config):
    return (config.get("online") or {}).get("prompts") or config["data"]["train"]


# ---- the configs ------------------------------------------------------------------------------------

def test_examples_exist():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"hh_rlhf_dpo.yaml", "lora_simpo.yaml", "mpo_composite.yaml", "online_dpo.yaml", "ranked_lists.yaml",
            "kto_unpaired.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_validates_and_names_real_sources(path):
    from dpokit.config import load_config

    config = load_config(path)  # every key and hyperparameter validated, no model loaded
    text = open(path).read()
    assert "../shared" not in text and "runs/demo" not in text, "examples must not depend on this repository's files"
    model = config.model.name_or_path
    assert HUB_ID.match(model) and not os.path.exists(os.path.join(REPO, model)), f"{model}: not a hub model id"
    source = data_source(raw(path))
    if source == LISTS_FILE:  # ranked lists: converted from a hub dataset by the script the header names
        assert "examples/ultrafeedback_lists.py" in text and "openbmb/UltraFeedback" in text
    else:
        assert source in STAND_INS, f"{source}: add a local stand-in in this format to STAND_INS"
        assert HUB_ID.match(source)
    judge = config.online.judge
    if isinstance(judge, dict) and judge.get("kind") == "reward_model":
        assert HUB_ID.match(judge["path"]), "the judge must be a model a user can download"
    # the header documents how to run it without the hub
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "--set model.name_or_path=" in header
    assert ("--set online.prompts=" in header) if config.online.strategy else ("--set data.train=" in header)
    if isinstance(judge, dict) and judge.get("kind") == "reward_model":
        assert "--set online.judge.path=" in header


@pytest.mark.parametrize("path", ACCELERATE, ids=os.path.basename)
def test_accelerate_configs_parse(path):
    config = raw(path)
    assert config["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert isinstance(config["num_processes"], int) and config["num_processes"] >= 1
    deepspeed = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if deepspeed:  # named relative to the repository root
        with open(os.path.join(REPO, deepspeed)) as handle:
            assert "zero_optimization" in json.load(handle)
    for name in re.findall(r"examples/[\w/]+\.yaml", open(path).read()):
        assert os.path.exists(os.path.join(REPO, name)), f"{path} names {name}, which does not exist"


def test_lists_converter(tmp_path):
    convert = load_converter()
    rng = random.Random(0)
    records = openbmb_ultrafeedback(4, rng)
    records[1]["completions"][0]["response"] = ""  # left out
    records[1]["completions"][1]["overall_score"] = float("nan")  # left out
    records[2]["completions"] = records[2]["completions"][:1]  # one completion: ranks nothing
    for c in records[3]["completions"]:
        c["overall_score"] = 5.0  # all tied: ranks nothing
    lists = list(convert.convert(records))
    assert len(lists) == 2
    assert lists[0]["scores"] == [c["overall_score"] for c in records[0]["completions"]]
    assert lists[0]["prompt"] == [{"role": "user", "content": records[0]["instruction"]}]
    assert lists[0]["responses"][0] == [{"role": "assistant", "content": records[0]["completions"][0]["response"]}]
    assert len(lists[1]["responses"]) == 2
    # a local copy of the dataset as --source; the output reads back as ranked lists
    source = write_jsonl(tmp_path / "uf.jsonl", records)
    out = tmp_path / "lists.jsonl"
    assert convert.main(["--source", source, "--output", str(out)]) == 0
    from dpokit.data.formats import load_examples

    examples = load_examples(str(out), "lists")
    assert [e.scores for e in examples] == [ranked["scores"] for ranked in lists]


# ---- two optimizer steps of every example on local stand-ins -----------------------------------------

@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    """A tiny sequence-classification reward model saved like a hub one (safetensors + tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-rm")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def local_overrides(path, tmp_path, tiny_model_dir, reward_model_dir):
    """What a user without the hub passes (model, data, judge), plus a tiny, two-step budget."""
    config = raw(path)
    rng = random.Random(0)
    source = data_source(config)
    if source == LISTS_FILE:
        lists = list(load_converter().convert(openbmb_ultrafeedback(24, rng)))
        data = write_jsonl(tmp_path / "lists.jsonl", lists)
    else:
        data = write_jsonl(tmp_path / "data.jsonl", STAND_INS[source](24, rng))
    sets = [f"model.name_or_path={tiny_model_dir}", "model.dtype=float32",
            f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.epochs=1",
            "train.batch_size=2", "train.grad_accum=1", "train.report_to=[]", "train.progress_bar=false",
            "data.max_length=96", "data.max_prompt_length=48"]
    if config.get("online"):
        sets += [f"online.prompts={data}", f"online.judge.path={reward_model_dir}", "online.judge.device=cpu",
                 "online.rounds=1", "online.prompts_per_round=8", "online.samples_per_prompt=2",
                 "online.max_new_tokens=6", "online.generation_batch_size=8"]
    else:
        sets.append(f"data.train={data}")  # 24 records: one epoch holds more than two steps of 2
    if (config.get("reference") or {}).get("precompute"):
        sets.append(f"reference.cache_dir={tmp_path / 'ref-cache'}")
    return sets


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_trains_two_steps_on_local_stand_ins(path, tmp_path, tiny_model_dir, reward_model_dir, capsys):
    from dpokit.cli import main

    sets = local_overrides(path, tmp_path, tiny_model_dir, reward_model_dir)
    argv = ["train", path]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "completed"
    run = tmp_path / "run"
    train_dir = run / "rounds" / "round-000" / "train" if raw(path).get("online") else run
    steps = [m for m in metrics(train_dir) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(isinstance(m["loss"], float) for m in steps)
    assert (run / "final" / "config.json").exists()
    if raw(path).get("online"):
        samples = (run / "rounds" / "round-000" / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 8
