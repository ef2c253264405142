"""bf16 models, fp32 loss math: the engine hands the loss fp32 log-probs whatever the model's dtype.

A bf16 tiny model (and an fp32 one under bf16 autocast, as ``train.mixed_precision: bf16`` runs)
against the same weights in fp32: every float field of ``LossInputs`` and the DPO loss are fp32,
and they agree within bf16 rounding of the forward; the gradients too.
"""

import copy

import pytest
import torch

from dpokit.data.collate import Batch
from dpokit.losses import get_loss
from dpokit.reference import ModelReference
from dpokit.scoring.lm.engine import LogProbEngine

from .test_layouts import make_groups, make_model


def pair_batch():
    groups = make_groups(seed=9, ks=(2,) * 6, prompt=(4, 12), completion=(3, 9))
    return Batch("pairs", groups, torch.arange(len(groups)))


def step(policy, reference, layout, autocast=False):
    loss_fn = get_loss("dpo", beta=0.5)
    engine = LogProbEngine(loss_fn.needs, 0, layout, chunk_size=7)
    policy.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        inputs = engine.loss_inputs(policy, pair_batch(), ModelReference(reference))
        loss = loss_fn(inputs).loss.mean()
    loss.backward()
    fields = {k: v for k, v in vars(inputs).items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    grads = {n: p.grad.float() for n, p in policy.named_parameters()}
    return loss, fields, grads


@pytest.mark.parametrize("layout", ["padded", "packed", "prompt_shared"])
@pytest.mark.parametrize("mode", ["bf16_weights", "bf16_autocast"])
def test_bf16_model_gives_fp32_loss_math_close_to_fp32(layout, mode):
    base = make_model("sdpa", torch.float32, seed=3).to(torch.bfloat16).float()  # weights exact in bf16
    with torch.no_grad():  # a policy a little away from the reference, so the loss has a signal
        for param in base.parameters():
            param.add_(0.02 * torch.randn_like(param)).copy_(param.to(torch.bfloat16).float())
    reference = make_model("sdpa", torch.float32, seed=3).to(torch.bfloat16).float()
    expected_loss, expected, expected_grads = step(copy.deepcopy(base), reference, layout)
    if mode == "bf16_weights":
        loss, fields, grads = step(copy.deepcopy(base).to(torch.bfloat16), reference.to(torch.bfloat16), layout)
    else:
        loss, fields, grads = step(copy.deepcopy(base), reference, layout, autocast=True)
    assert loss.dtype == torch.float32
    assert {k: v.dtype for k, v in fields.items()} == {k: torch.float32 for k in expected}
    assert "reference_chosen_logps" in fields and "policy_rejected_logps" in fields
    for name in ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"):
        scale = expected[name].abs().max()
        assert (fields[name] - expected[name]).abs().max() <= 1e-2 * scale, name  # seen: 1.5e-3
    assert abs(float(loss) - float(expected_loss)) <= 3e-2  # seen: 1e-2 (loss 0.73)
    for name, grad in expected_grads.items():
        scale = grad.abs().max()
        if scale > 0:
            assert (grads[name] - grad).abs().max() <= 0.15 * scale, name  # seen: 6e-2
