"""Preference objectives behind one switch.

    from dpokit.losses import get_loss, LossInputs
    out = get_loss("dpo", beta=0.1)(LossInputs(...))
    out.loss      # per-example loss, shape [B]
    out.metrics   # dict of scalar tensors (rewards/chosen, rewards/margins, ...)
"""

from .base import LossInputs, LossOutput, pairwise_metrics, reward_metrics
from .registry import (
    CompositeLoss,
    ConfiguredLoss,
    LossSpec,
    Needs,
    get_loss,
    get_spec,
    list_losses,
    parse_loss_expression,
    register_loss,
    resolve_name,
)

# Importing a family module registers its losses.
from . import pairwise, reference_free, regularizers  # noqa: E402,F401
from . import catalog  # noqa: E402,F401

__all__ = [
    "LossInputs",
    "LossOutput",
    "Needs",
    "LossSpec",
    "ConfiguredLoss",
    "CompositeLoss",
    "get_loss",
    "get_spec",
    "list_losses",
    "parse_loss_expression",
    "register_loss",
    "resolve_name",
    "pairwise_metrics",
    "reward_metrics",
]
