"""Step-level reasoning: tree search over reasoning steps that turns a policy's own step samples into
step preference pairs (:mod:`dpokit.steps.search`, MCTS-DPO), the shared-prefix expansion it runs on
(:mod:`dpokit.steps.expand`), and code execution for self-generated tests (:mod:`dpokit.steps.sandbox`,
:mod:`dpokit.steps.dstc`). The pairs train with the ``step_level`` losses through the regular pairwise
path (:mod:`dpokit.data.steps`, :mod:`dpokit.scoring.steps`)."""

from .expand import Candidate, StepSampler, length_normalised_prior
from .search import MCTS, Node, SearchConfig, SearchTask, SelfEvaluator, Tree, back_propagate, select_child

__all__ = ["Candidate", "StepSampler", "length_normalised_prior", "MCTS", "Node", "SearchConfig", "SearchTask",
           "SelfEvaluator", "Tree", "back_propagate", "select_child"]
