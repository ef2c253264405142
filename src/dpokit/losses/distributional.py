"""Distributional losses: AOT matches the distributions of rewards over the batch, not pairs.

AOT (Melnychuk et al. 2024, arXiv 2406.05882) sorts a batch quantity and applies the (optionally
label-smoothed) logistic loss to the difference of the sorted values, element by element:

    L_i = -(1-eps) logsig(beta d_i) - eps logsig(-beta d_i),   d = sort_B(a) - sort_B(b)

with ``(a, b) = (lp_w - lp_l, lr_w - lr_l)`` for ``aot`` (paired) and ``(r_w, r_l)`` for
``aot_unpaired``. ``eps`` is ``label_smoothing`` (TRL's name), default 0; default ``beta`` 0.01
(TRL doc). Notation: ``docs/losses/notation.md``.

Shared properties of both losses:

* Entry ``i`` of the returned loss belongs to the ``i``-th quantile, not to example ``i``: only
  the batch mean is meaningful. ``Needs.per_example`` is False, so modifiers that weight or select
  examples (WPO, MADPO, beta-DPO) refuse them.
* Batch-coupled: when run distributed, the margins are gathered from every process with an
  autograd all-gather (gradients flow back to each process's own examples), sorted globally, and
  each process returns its slice, so the mean over processes is the loss of the global batch.
  TRL sorts each process's batch alone; on one process the two are identical.
* A batch of one has nothing to sort: ``aot`` is then DPO on its margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._distributed import gather_detached, gather_with_grad
from .base import LossInputs, LossOutput, pairwise_metrics
from .registry import Needs, register_loss

SORTED_PAIRS = Needs(reference=True, data="pairs", batch_coupled=True, per_example=False)


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _aot(inputs: LossInputs, beta: float, label_smoothing: float, unpaired: bool) -> LossOutput:
    if unpaired:
        a, b = inputs.chosen_logratios(), inputs.rejected_logratios()
        a_all, offset = gather_with_grad(a)
        b_all, _ = gather_with_grad(b)
    else:
        inputs.require("reference_chosen_logps", "reference_rejected_logps")
        a = inputs.policy_chosen_logps - inputs.policy_rejected_logps
        b = inputs.reference_chosen_logps - inputs.reference_rejected_logps
        a_all, offset = gather_with_grad(a)
        b_all = gather_detached(b)
    d = torch.sort(a_all, dim=0)[0] - torch.sort(b_all, dim=0)[0]
    loss_all = _smoothed_logistic(beta * d, label_smoothing)
    loss = loss_all[offset: offset + a.shape[0]]
    return LossOutput(loss, pairwise_metrics(inputs, beta))


@register_loss(
    "aot",
    family="distributional",
    source="Melnychuk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv 2406.05882; TRL loss_type='aot'",
    needs=SORTED_PAIRS,
)
def aot_loss(inputs: LossInputs, beta: float = 0.01, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (paired): ``d = sort_B(lp_w - lp_l) - sort_B(lr_w - lr_l)``; ``L = -(1-eps) logsig(beta d) - eps logsig(-beta d)``.

    Quantile matching over the batch: see the module docstring (per-quantile entries, distributed
    sort, defaults). Same value as TRL ``loss_type="aot"`` on one process.
    Source: Melnychuk et al. 2024, arXiv 2406.05882.
    """
    return _aot(inputs, beta, label_smoothing, unpaired=False)


@register_loss(
    "aot_unpaired",
    family="distributional",
    source="Melnychuk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv 2406.05882; TRL loss_type='aot_unpaired'",
    needs=SORTED_PAIRS,
)
def aot_unpaired_loss(inputs: LossInputs, beta: float = 0.01, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (unpaired): ``d = sort_B(r_w) - sort_B(r_l)``; ``L = -(1-eps) logsig(beta d) - eps logsig(-beta d)``.

    Matches the chosen and rejected reward distributions without using the pairing. Quantile
    matching over the batch: see the module docstring. Same value as TRL ``loss_type="aot_unpaired"``
    on one process.
    Source: Melnychuk et al. 2024, arXiv 2406.05882.
    """
    return _aot(inputs, beta, label_smoothing, unpaired=True)
