"""FlexAttention block masks (``attn_implementation='flex_attention'``) for packed and prompt-shared.

On CPU (torch 2.13) flex_attention has no backward, and compiled (as transformers calls it) runs
float32/bfloat16 only. So: the block mask is checked entry by entry against the dense mask; the
log-probs through the uncompiled flex kernel (float64, forward) against ``padded``; the gradients
through a dense stand-in for the kernel that reads the same ``BlockMask`` (its ``mask_mod``);
and the real compiled path once, in float32 forward (slow: about 30 s of compilation).
"""

import pytest
import torch

pytest.importorskip("torch.nn.attention.flex_attention")
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention  # noqa: E402
import transformers.integrations.flex_attention as hf_flex  # noqa: E402

from dpokit.scoring.lm.flex import block_mask  # noqa: E402
from dpokit.scoring.lm.layouts import build_packed_batch, layout_supported  # noqa: E402

from .test_layouts import CPU, assert_grads_close, make_groups, make_model, run_layout  # noqa: E402

SHARED = (("packed", False), ("prompt_shared", True))


def dense_of(mask: BlockMask, rows: int, length: int) -> torch.Tensor:
    return create_mask(mask.mask_mod, rows, 1, length, length, device="cpu")


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("name,share", SHARED)
def test_block_mask_equals_the_dense_mask(name, share, window):
    batch = build_packed_batch(make_groups(seed=2), 0, share, CPU)
    rows, length = batch.input_ids.shape
    mask = block_mask(batch, window)
    assert isinstance(mask, BlockMask) and mask.shape == (rows, 1, length, length)
    assert torch.equal(dense_of(mask, rows, length), batch.attention_mask("bool", window=window))


def test_block_mask_skips_blocks_of_other_sequences():
    groups = make_groups(seed=3, ks=(2,) * 24, prompt=(20, 30), completion=(10, 20))
    batch = build_packed_batch(groups, 0, True, CPU, capacity=None)  # one row of about 1000 tokens
    assert batch.input_ids.shape[1] > 4 * 128
    mask = block_mask(batch)
    assert mask.sparsity() > 50.0  # percent of blocks never computed (causal alone skips under 50)
    assert torch.equal(dense_of(mask, 1, batch.input_ids.shape[1]), batch.attention_mask("bool"))


def _record(calls, kernel):
    def run(query, key, value, training=False, **kwargs):
        calls.append(kwargs.get("block_mask"))
        return kernel(query, key, value, **kwargs)

    return run


def _eager_flex(query, key, value, **kwargs):
    kwargs.pop("return_aux", None)
    kwargs.pop("return_lse", None)
    return flex_attention(query, key, value, **kwargs)


def _dense_flex(query, key, value, score_mod=None, block_mask=None, enable_gqa=False, scale=None, **kwargs):
    """flex_attention by dense math: the kernel's semantics, with gradients on CPU."""
    if enable_gqa:
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    keep = create_mask(block_mask.mask_mod, query.shape[0], 1, query.shape[2], key.shape[2], device=query.device)
    scores = (query @ key.transpose(-1, -2)) * (scale if scale is not None else query.shape[-1] ** -0.5)
    scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(-1) @ value


@pytest.mark.parametrize("family,extra", [
    ("llama", {}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
               "layer_types": ["full_attention", "sliding_attention"]}),
])
@pytest.mark.parametrize("name", ["packed", "prompt_shared"])
def test_flex_logps_match_padded(monkeypatch, name, family, extra):
    calls = []
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", _record(calls, _eager_flex))
    flex_model = make_model("flex_attention", family=family, **extra)
    ok, reason = layout_supported(flex_model, name)
    assert ok and "BlockMask" in reason
    groups = make_groups(seed=4, prompt=(5, 9), completion=(3, 7))
    with torch.no_grad():
        expected, _, _ = run_layout(make_model("sdpa", family=family, **extra), "padded", groups)
        got, _, _ = run_layout(flex_model, name, groups)
    assert calls and all(isinstance(m, BlockMask) for m in calls)  # the kernel got our block mask
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["packed", "prompt_shared"])
def test_flex_gradients_match_padded(monkeypatch, name):
    calls = []
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", _record(calls, _dense_flex))
    groups = make_groups(seed=1)
    weights = torch.randn(sum(len(cs) for _, cs in groups), generator=torch.Generator().manual_seed(0)).double()

    def grads(model, layout):
        logps, _, lengths = run_layout(model, layout, groups)
        sums = torch.stack([piece.sum() for piece in logps.split(lengths)])
        (weights * sums).sum().backward()
        return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    expected_logps, expected_grads = grads(make_model("sdpa"), "padded")
    logps, got_grads = grads(make_model("flex_attention"), name)
    assert calls and all(isinstance(m, BlockMask) for m in calls)
    torch.testing.assert_close(logps, expected_logps, atol=1e-9, rtol=1e-9)
    assert_grads_close(got_grads, expected_grads, 1e-5)


@pytest.mark.slow
def test_compiled_flex_forward_on_cpu_matches_padded():
    """The path transformers takes (compiled flex_attention), float32, forward only on CPU."""
    groups = make_groups(seed=4)
    with torch.no_grad():
        expected, _, _ = run_layout(make_model("sdpa", torch.float32), "padded", groups)
        got, _, _ = run_layout(make_model("flex_attention", torch.float32), "prompt_shared", groups)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
