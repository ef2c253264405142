"""Every round strategy, registered: import :data:`STRATEGIES` from here (not from
:mod:`dpokit.online.strategies`, which holds the registry and the strategies defined there) so that
strategies living in modules of their own (:mod:`dpokit.online.gpo`, :mod:`~dpokit.online.groups`,
:mod:`~dpokit.online.oprl`, :mod:`~dpokit.online.dpa`, :mod:`~dpokit.online.mcts_dpo`) are registered too."""

from . import dpa, gpo, groups, mcts_dpo, oprl  # noqa: F401  (register dpa_rsf; gpo; grpo, rloo, reinforce, copo; mcts_dpo; oprl)
from .strategies import STRATEGIES, RoundStrategy, check_options, register_strategy

__all__ = ["STRATEGIES", "RoundStrategy", "check_options", "register_strategy"]
