"""The chunked vocabulary projection (``ChunkedProjection``) against autograd on full logits."""

import pytest
import torch

from dpokit.scoring.lm.projection import STATS, ChunkedProjection, logit_transform, project_selected

N, H, V = 23, 12, 40


def problem(seed=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) * 2).to(dtype).requires_grad_(True)
    head = torch.nn.Linear(H, V, bias=bias).to(dtype)
    ref_head = torch.nn.Linear(H, V, bias=bias).to(dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        ref_head.weight.copy_(torch.randn(V, H, generator=g))
        if bias:
            head.bias.copy_(torch.randn(V, generator=g))
            ref_head.bias.copy_(torch.randn(V, generator=g))
    ref_hidden = torch.randn(N, H, generator=g).to(dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, head, ref_hidden, ref_head, targets


def naive(hidden, head, targets, ref_hidden=None, ref_head=None, transform=None):
    """The definitions, on the full [N, V] logits."""
    transform = transform or (lambda x: x)
    logp = transform(head(hidden)).log_softmax(-1)
    p = logp.exp()
    out = {
        "logps": logp.gather(-1, targets[:, None]).squeeze(-1),
        "entropy": -(p * logp).sum(-1),
        "sum_p2": (p * p).sum(-1),
    }
    if ref_head is not None:
        q_log = transform(ref_head(ref_hidden)).log_softmax(-1)
        out["ref_kl"] = (q_log.exp() * (q_log - logp)).sum(-1)
    return out


def weighted_sum(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((torch.randn(N, generator=g).to(v.dtype) * v).sum() for _, v in sorted(out.items()))


@pytest.mark.parametrize("chunk_size", [1, 5, N, 1000])
@pytest.mark.parametrize("stats", [(), ("entropy",), ("sum_p2",), ("ref_kl",), STATS])
def test_values_and_gradients_match_full_logits(chunk_size, stats):
    hidden, head, ref_hidden, ref_head, targets = problem()
    out = project_selected(hidden, targets, head, stats, chunk_size, ref_hidden=ref_hidden, ref_lm_head=ref_head)
    assert set(out) == {"logps", *stats}
    expected = naive(hidden, head, targets, ref_hidden, ref_head)
    expected = {k: expected[k] for k in out}
    for name in out:
        torch.testing.assert_close(out[name], expected[name], atol=1e-12, rtol=1e-12, msg=name)
    params = [hidden, head.weight, head.bias]
    got = torch.autograd.grad(weighted_sum(out), params)
    want = torch.autograd.grad(weighted_sum(expected), params)
    for name, a, b in zip(("hidden", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10, msg=name)


def test_gradcheck_against_finite_differences():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(7, 5, generator=g, dtype=torch.float64)
    ref_weight = torch.randn(9, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 9, (7,), generator=g)

    def fn(h, w, b):
        return ChunkedProjection.apply(h, w, b, targets, ref_hidden, ref_weight, None, 3, None, STATS)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), eps=1e-6, atol=1e-7)


def test_a_wrong_backward_is_detected(monkeypatch):
    """Negative control: drop the entropy term of the backward and the comparison fails."""
    hidden, head, ref_hidden, ref_head, targets = problem()
    original = ChunkedProjection.backward

    def broken(ctx, grad_logps, *grad_stats):
        return original(ctx, grad_logps, *([None] * len(grad_stats)))

    monkeypatch.setattr(ChunkedProjection, "backward", staticmethod(broken))
    out = project_selected(hidden, targets, head, ("entropy",), 4)
    got = torch.autograd.grad(weighted_sum(out), hidden)[0]
    expected = {k: v for k, v in naive(hidden, head, targets).items() if k in out}
    want = torch.autograd.grad(weighted_sum(expected), hidden)[0]
    assert (got - want).abs().max() > 1e-3


class _Config:
    final_logit_softcapping = 3.0
    logit_scale = 0.7
    logits_scaling = None


class _Model(torch.nn.Module):
    config = _Config()


def test_logit_transform_soft_capping_and_scale():
    transform = logit_transform(_Model())
    assert not transform.is_identity
    hidden, head, ref_hidden, ref_head, targets = problem(seed=2)
    out = project_selected(hidden, targets, head, STATS, 6, transform, ref_hidden, ref_head)
    expected = naive(hidden, head, targets, ref_hidden, ref_head, transform)
    for name in out:
        torch.testing.assert_close(out[name], expected[name], atol=1e-12, rtol=1e-12, msg=name)
    params = [hidden, head.weight, head.bias]
    for a, b in zip(torch.autograd.grad(weighted_sum(out), params), torch.autograd.grad(weighted_sum(expected), params)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)


def test_fused_and_checkpointed_paths_agree():
    hidden, head, ref_hidden, ref_head, targets = problem(seed=4)
    outs, grads = [], []
    for fused in (True, False):
        out = project_selected(hidden, targets, head, STATS, 5, None, ref_hidden, ref_head, fused=fused)
        outs.append(out)
        grads.append(torch.autograd.grad(weighted_sum(out), [hidden, head.weight, head.bias]))
    for name in outs[0]:
        torch.testing.assert_close(outs[0][name], outs[1][name], atol=1e-12, rtol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)


def test_no_full_logits_are_saved_for_backward():
    """Everything autograd keeps for the backward is O(N * H + V * H), never O(N * V)."""
    n, h, v = 64, 8, 1000
    hidden = torch.randn(n, h, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    targets = torch.randint(0, v, (n,))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = project_selected(hidden, targets, head, ("entropy", "sum_p2"), chunk_size=16)
    assert max(sizes) <= max(n * h, v * h)
    weighted_sum({k: out[k][:N] for k in out}).backward()
    # the naive computation does save [N, V] tensors: the check can fail
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive(hidden, head, targets)
    assert max(sizes) >= n * v


def test_frozen_head_and_unused_outputs():
    hidden, head, ref_hidden, ref_head, targets = problem(seed=5, bias=False)
    head.weight.requires_grad_(False)
    out = project_selected(hidden, targets, head, ("entropy", "sum_p2"), 7)
    (grad,) = torch.autograd.grad(out["sum_p2"].sum(), hidden)  # logps and entropy unused
    (want,) = torch.autograd.grad(naive(hidden, head, targets)["sum_p2"].sum(), hidden)
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        values = project_selected(hidden, targets, head, (), 7)["logps"]
    assert values.grad_fn is None
    torch.testing.assert_close(values, naive(hidden, head, targets)["logps"], atol=1e-12, rtol=1e-12)


def test_empty_selection_gives_zero_gradients():
    hidden, head, _, _, _ = problem()
    empty = hidden[:0]
    out = project_selected(empty, torch.zeros(0, dtype=torch.long), head, ("entropy",))
    assert out["logps"].shape == (0,)
    (out["logps"].sum() + out["entropy"].sum() + (hidden * 0).sum()).backward()
    assert head.weight.grad is not None and float(head.weight.grad.abs().max()) == 0.0


def test_bfloat16_weights_and_autocast():
    """16-bit models: the LM-head gradient is accumulated across chunks in fp32; results agree
    with the fp32 computation to bf16 precision. Autocast runs the chunks' matmuls in bf16."""
    hidden, head, ref_hidden, ref_head, targets = problem(seed=6, dtype=torch.float32)
    expected = project_selected(hidden, targets, head, ("entropy",), 4)
    want = torch.autograd.grad(weighted_sum(expected), [hidden, head.weight])

    head16 = torch.nn.Linear(H, V).to(torch.bfloat16)
    head16.load_state_dict({k: v.to(torch.bfloat16) for k, v in head.state_dict().items()})
    hidden16 = hidden.detach().to(torch.bfloat16).requires_grad_(True)
    out16 = project_selected(hidden16, targets, head16, ("entropy",), 4)
    assert out16["logps"].dtype == torch.float32
    got = torch.autograd.grad(weighted_sum(out16), [hidden16, head16.weight])
    assert got[1].dtype == torch.bfloat16
    for a, b in zip(got, want):
        assert float((a.float() - b).abs().max()) <= 0.05 * float(b.abs().max())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = project_selected(hidden, targets, head, ("entropy",), 4)
    got = torch.autograd.grad(weighted_sum(out_ac), [hidden, head.weight])
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= 0.05 * float(b.abs().max())
