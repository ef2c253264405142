"""Imports every loss family module beyond the core ones so they register.

Each family lives in its own module; add a new module's import here. The public helpers of those
modules (modifiers, the KTO balance check) are also made available as ``dpokit.losses.<name>``.
"""

import sys as _sys

from . import divergence, pairwise_extra, reference_free_extra, regularized, token_level, unpaired  # noqa: F401
from . import modifiers  # noqa: F401
from . import listwise, semantic  # noqa: F401  (ranked-list losses; Sem-DPO)
from . import online  # noqa: F401  (xpo, hypo, ofs_dpo: read extras the online round loop supplies)
from .modifiers import ModifiedLoss, apply_modifiers, build_loss, list_modifiers
from .token_level import diff_token_weights
from .unpaired import kto_weight_warning

PUBLIC = {
    "ModifiedLoss": ModifiedLoss,
    "apply_modifiers": apply_modifiers,
    "build_loss": build_loss,
    "list_modifiers": list_modifiers,
    "kto_weight_warning": kto_weight_warning,
    "diff_token_weights": diff_token_weights,
}

# ``dpokit.losses`` imports this module while it initialises: expose the helpers on the package.
_package = _sys.modules[__name__.rpartition(".")[0]]
for _name, _obj in PUBLIC.items():
    setattr(_package, _name, _obj)
