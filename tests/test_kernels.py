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
