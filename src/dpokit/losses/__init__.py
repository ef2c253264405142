"""Preference objectives behind one switch.

    from dpokit.losses import build_loss, get_loss, LossInputs
    out = get_loss("dpo", beta=0.1)(LossInputs(...))
    out.loss      # per-example loss, shape [B]
    out.metrics   # dict of scalar tensors (rewards/chosen, rewards/margins, ...)
    loss = build_loss({"name": "dpo", "beta": 0.1, "modifiers": {"ld_alpha": 0.5}})

One family = one module = one page ``docs/losses/<module>.md``; a loss's ``family`` is the name of
its module. Importing a family module registers its losses; every family is imported here.
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

# The family modules, in catalog order (importing one registers its losses).
from . import (  # noqa: E402
    pairwise,
    anchored,
    distributional,
    divergence,
    multi_objective,
    reference_free,
    regularized,
    token_level,
    unpaired,
    listwise,
    online,
    policy_gradient,
    process_reward,
    step_level,
    value,
    diffusion,
    phygdpo,
    bide,
)
from . import modifiers  # noqa: E402
from .modifiers import ModifiedLoss, apply_modifiers, build_loss, list_modifiers  # noqa: E402
from .token_level import diff_token_weights  # noqa: E402
from .unpaired import kto_weight_warning  # noqa: E402

FAMILIES = (pairwise, anchored, distributional, divergence, multi_objective, reference_free, regularized,
            token_level, unpaired, listwise, online, policy_gradient, process_reward, step_level, value,
            diffusion, phygdpo, bide)

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
    "ModifiedLoss",
    "apply_modifiers",
    "build_loss",
    "list_modifiers",
    "kto_weight_warning",
    "diff_token_weights",
    "FAMILIES",
]
