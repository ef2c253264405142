"""``model.attn_implementation: auto``: the kernel per layout, with the device mocked."""

import importlib.util

import pytest
import torch

from dpokit import kernels
from dpokit.config import ModelConfig


@pytest.fixture
def machine(monkeypatch):
    """Set the (mocked) device: ``machine(cuda, capability, installed={...})``."""

    def set_machine(cuda=True, capability=(9, 0), installed=("flash_attn", "triton")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: object() if name in installed else
                            (None if name in ("flash_attn", "triton") else real(name, *a)))

    return set_machine


@pytest.mark.parametrize("layout,expected", [
    ("packed", "flash_attention_2"), ("prompt_shared", "flex_attention"), ("padded", "sdpa")])
def test_modern_gpu_with_everything_installed(machine, layout, expected):
    machine()
    assert kernels.choose_attention(layout, dtype="bfloat16") == expected
    assert kernels.choose_attention(layout, "cuda:0", torch.bfloat16) == expected


@pytest.mark.parametrize("layout", ["packed", "prompt_shared", "padded"])
def test_cpu_always_gets_sdpa(machine, layout):
    machine(cuda=False)
    assert kernels.choose_attention(layout, dtype="bfloat16") == "sdpa"
    machine(cuda=True)  # a GPU present, the model on the CPU
    assert kernels.choose_attention(layout, "cpu", "bfloat16") == "sdpa"


def test_what_is_missing_falls_back_to_sdpa(machine):
    machine(installed=("triton",))  # no flash_attn
    assert kernels.choose_attention("packed", dtype="bfloat16") == "sdpa"
    assert kernels.choose_attention("prompt_shared", dtype="bfloat16") == "flex_attention"
    machine(installed=("flash_attn",))  # no triton: no FlexAttention kernels
    assert kernels.choose_attention("prompt_shared", dtype="bfloat16") == "sdpa"
    assert kernels.choose_attention("packed", dtype="bfloat16") == "flash_attention_2"
    machine(capability=(7, 5))  # Turing: neither flash-attention 2 nor the Triton flex kernels
    assert kernels.choose_attention("packed", dtype="bfloat16") == "sdpa"
    assert kernels.choose_attention("prompt_shared", dtype="bfloat16") == "sdpa"


@pytest.mark.parametrize("dtype", ["float32", "auto", None, torch.float32])
def test_flash_attention_only_for_half_precision_weights(machine, dtype):
    machine()
    assert kernels.choose_attention("packed", dtype=dtype) == "sdpa"
    assert kernels.choose_attention("packed", dtype="float16") == "flash_attention_2"


def test_resolve_keeps_explicit_choices(machine):
    machine()
    assert kernels.resolve_attention("eager", "packed", dtype="bfloat16") == "eager"
    assert kernels.resolve_attention(None, "packed", dtype="bfloat16") is None
    assert kernels.resolve_attention("auto", "packed", dtype="bfloat16") == "flash_attention_2"


def test_load_causal_lm_passes_the_choice(machine, monkeypatch):
    import transformers

    from dpokit import models

    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return "model"

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    machine()
    cfg = ModelConfig(name_or_path="x", dtype="bfloat16", attn_implementation="auto")
    models.load_causal_lm("x", cfg, "prompt_shared")
    assert seen["attn_implementation"] == "flex_attention"
    models.load_causal_lm("x", cfg, "packed")
    assert seen["attn_implementation"] == "flash_attention_2"
    machine(cuda=False)
    models.load_causal_lm("x", cfg, "prompt_shared")
    assert seen["attn_implementation"] == "sdpa"
    machine()
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_from_pretrained)
    import dpokit.families  # noqa: F401  (registers the vlm kind's loader)

    models.load_causal_lm("x", ModelConfig(name_or_path="x", kind="vlm", dtype="bfloat16",
                                           attn_implementation="auto"), "prompt_shared")
    assert seen["attn_implementation"] == "sdpa"


@pytest.mark.slow  # two training runs
def test_gpu_options_train_like_the_defaults_on_cpu(tiny_model_dir, pairs_file, tmp_path):
    """``model.attn_implementation: auto`` and ``train.projection: liger`` on CPU: SDPA and the
    chunked projection (with the fallback warning), so the same losses and weights as the defaults."""
    from safetensors.torch import load_file

    from conftest import train_config
    from dpokit.config import from_dict
    from dpokit.train import Trainer
    from dpokit.train.logging import read_metrics

    def run(name, model, train):
        raw = train_config(tiny_model_dir, pairs_file, tmp_path / name, model=model,
                           train={"max_steps": 2, "layout": "prompt_shared", "lr": 1e-2, **train})
        Trainer(from_dict(raw)).fit()
        losses = [row["loss"] for row in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in row]
        return losses, load_file(str(tmp_path / name / "final" / "model.safetensors"))

    from dpokit.scoring.lm import fused

    expected = run("defaults", {}, {})
    fused._WARNED.clear()  # the warning is given once per process
    with pytest.warns(RuntimeWarning, match="train.projection 'liger' is not used here"):
        got = run("gpu", {"attn_implementation": "auto"}, {"projection": "liger"})
    assert got[0] == expected[0]
    for key, value in expected[1].items():
        assert torch.equal(got[1][key], value), key


def test_an_unregistered_model_kind_is_an_error_not_a_causal_lm(monkeypatch):
    from dpokit import models
    from dpokit.errors import ConfigError

    monkeypatch.setattr(models, "KINDS", {})
    with pytest.raises(ConfigError, match="model.kind: 'vlm' has no loader"):
        models.load_causal_lm("x", ModelConfig(name_or_path="x", kind="vlm"))
