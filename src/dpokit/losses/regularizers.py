"""Terms that are added to a preference loss rather than used alone (compose with ``+``)."""

from __future__ import annotations

from .base import LossInputs, LossOutput
from .registry import Needs, register_loss


@register_loss(
    "sft",
    family="regularizer",
    source="Negative log-likelihood of the chosen completion, as TRL's loss_type='sft' "
    "(used by RPO/MPO recipes, e.g. MPO arXiv 2411.10442)",
    needs=Needs(reference=False, data="pairs"),
    aliases=("nll",),
)
def sft_loss(inputs: LossInputs, length_normalize: bool = True) -> LossOutput:
    """SFT term: ``L = -lp(y_w)/|y_w|`` (token mean, TRL's ``sft``) or ``-lp(y_w)`` (sum).

    Compose it with a preference loss, e.g. ``"dpo + 0.2*sft"``. TRL pools the token mean over all
    chosen tokens of the batch; this averages per example first (equal when lengths are equal).
    Source: negative log-likelihood of the chosen completion; TRL ``loss_type="sft"``.
    """
    if length_normalize:
        nll = -inputs.mean_logps("chosen")
    else:
        inputs.require("policy_chosen_logps")
        nll = -inputs.policy_chosen_logps
    return LossOutput(nll, {"nll": nll.detach().mean()})
