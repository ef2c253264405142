"""``projection='liger'``: the CPU fallback gives the chunked projection's values and gradients,
and the glue around Liger's kernel (sign, fp32, soft-capping, bias, which calls reach it) is
checked against the chunked projection in bf16 with a stand-in for the kernel that has its API
and semantics (``reduction="none"`` per-token cross-entropy of ``softcap(hidden @ W.T + b)``)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from dpokit.losses import Needs
from dpokit.scoring.lm import fused
from dpokit.scoring.lm.engine import LogProbEngine

from .test_layouts import make_groups, make_model

GROUPS = make_groups(seed=7)


def logps_and_grads(model, projection, stats=()):
    model.zero_grad()
    engine = LogProbEngine(Needs(reference=False), 0, "packed", chunk_size=8, projection=projection)
    lp = engine.token_logprobs(model, GROUPS, stats)
    weights = torch.linspace(-1.0, 1.5, lp.sums.numel(), dtype=lp.sums.dtype)
    (weights * lp.sums).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.token_logps.detach(), lp.sums.detach(), grads


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="unknown projection 'fast'"):
        LogProbEngine(Needs(), 0, projection="fast")


def test_cpu_falls_back_to_the_chunked_projection_with_one_warning():
    model = make_model(dtype=torch.float32)
    expected = logps_and_grads(model, "chunked")
    fused._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="CUDA only"):
        got = logps_and_grads(model, "liger")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert all(torch.equal(got[2][n], g) for n, g in expected[2].items())


@pytest.fixture
def fake_liger(monkeypatch):
    """A stand-in ``liger_kernel.transformers.functional`` and a device check that lets CPU through."""
    calls = []

    def liger_fused_linear_cross_entropy(input, weight, target, bias=None, reduction="mean", softcap=None,
                                         accum_dtype=None, **kwargs):
        calls.append({"reduction": reduction, "softcap": softcap, "accum_dtype": accum_dtype,
                      "bias": bias is not None, "dtype": input.dtype})
        logits = F.linear(input, weight, bias).float()
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits, target, reduction=reduction)

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.ModuleType("liger_kernel.transformers"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    real = fused.liger_usable

    def usable(hidden, stats, transform):
        ok, reason = real(hidden, stats, transform)
        return (True, "") if "CUDA only" in reason or "liger-kernel" in reason else (ok, reason)

    monkeypatch.setattr(fused, "liger_usable", usable)
    monkeypatch.setattr(sys.modules["dpokit.scoring.lm.engine"], "liger_usable", usable)
    return calls


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_liger_glue_matches_the_chunked_projection_in_bf16(fake_liger, softcap):
    model = make_model(dtype=torch.bfloat16)
    model.config.final_logit_softcapping = softcap
    model.lm_head.bias = torch.nn.Parameter(torch.randn(model.lm_head.out_features, dtype=torch.bfloat16) * 0.3)
    expected = logps_and_grads(model, "chunked")
    assert not fake_liger
    got = logps_and_grads(model, "liger")
    assert fake_liger and all(c["reduction"] == "none" and c["softcap"] == softcap and c["bias"]
                              and c["accum_dtype"] == torch.float32 and c["dtype"] == torch.bfloat16
                              for c in fake_liger)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)  # same bf16 matmul, fp32 after
    torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=1e-5)
    for name, grad in expected[2].items():
        scale = grad.abs().max()
        assert (got[2][name] - grad).abs().max() <= 2e-2 * scale, name  # bf16 gradient rounding


def test_statistics_and_scaled_logits_stay_on_the_chunked_projection(fake_liger):
    model = make_model(dtype=torch.float32)
    fused._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="token statistics"):
        logps_and_grads(model, "liger", stats=("entropy",))
    model.config.logit_scale = 0.5
    with pytest.warns(RuntimeWarning, match="logit scaling"):
        logps_and_grads(model, "liger")
    assert not fake_liger


def test_version_check(monkeypatch):
    monkeypatch.setattr(fused.importlib.metadata, "version", lambda name: "0.6.1")
    ok, reason = fused.liger_installed()
    assert not ok and "older than 0.8.5" in reason
    monkeypatch.setattr(fused.importlib.metadata, "version", lambda name: "0.8.5")
    assert fused.liger_installed() == (True, "")
