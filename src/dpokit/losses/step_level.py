"""Step-level losses: preferences between reasoning steps after a shared prefix of steps.

A step pair ``(x + s_<k, y_w, y_l)`` is a pair whose prompt holds the question and the steps so far;
``y_w`` and ``y_l`` are candidate next steps, each possibly followed by its continuation (tree
search takes a child's step plus its chain of single-child descendants). The step scorer
(:mod:`dpokit.scoring.steps`) writes the step index of every completion token into
``token_stats["chosen/step_index"]`` / ``["rejected/step_index"]``; without it (the plain LM scorer)
the whole completion is one step. Notation: ``docs/losses/notation.md``; ``r_j(y)`` is the log-ratio
``lp - lr`` summed over the tokens of step ``j`` of ``y`` (``j = 0`` the first step after the prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossOutput, reward_metrics
from .registry import Needs, register_loss

VISITS = ("chosen_visits", "rejected_visits")


def _needs(beta: float = 0.1, discount: float = 1.0, conservative: bool = False,
           label_smoothing: float = 0.0) -> Needs:
    return Needs(reference=True, data="pairs", token_logps=True, extras=VISITS if conservative else ())


def step_logratio(inputs: LossInputs, which: str, discount: float) -> torch.Tensor:
    """``sum_j discount^j r_j(y)`` [B] (``discount^0 = 1``) for ``which`` in {"chosen", "rejected"}."""
    policy = getattr(inputs, f"policy_{which}_token_logps")
    reference = getattr(inputs, f"reference_{which}_token_logps")
    if policy is None or reference is None:  # sequence sums only: one step
        return getattr(inputs, f"{which}_logratios")()
    mask = getattr(inputs, f"{which}_token_mask")
    mask = torch.ones_like(policy, dtype=torch.bool) if mask is None else mask.bool()
    index = inputs.token_stats.get(f"{which}/step_index")
    values = (policy - reference).masked_fill(~mask, 0.0)
    if index is None or discount == 1.0:
        return values.sum(-1)
    index = index.to(policy.device)
    weights = torch.where(index == 0, torch.ones_like(values), torch.full_like(values, discount) ** index.to(values.dtype))
    return (values * weights).sum(-1)


def visit_smoothing(inputs: LossInputs) -> torch.Tensor:
    """MCTS-DPO's conservative label smoothing from visit counts: ``conf = 1 / (1 + N_l / max(1, N_w))``,
    ``eps = min(1 - conf, 0.5)`` [B]."""
    missing = [k for k in VISITS if k not in inputs.extras]
    if missing:
        raise ValueError(f"step_dpo(conservative=True) needs the per-pair extras {list(VISITS)}; missing {missing}")
    n_w, n_l = inputs.extras["chosen_visits"], inputs.extras["rejected_visits"]
    conf = 1.0 / (1.0 + n_l / n_w.clamp_min(1.0))
    return (1.0 - conf).clamp(max=0.5)


@register_loss(
    "step_dpo",
    family="step_level",
    source="Xie et al. 2024, Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning "
    "(MCTS-DPO), arXiv 2405.00451, official code tsrl_step; Lai et al. 2024, Step-DPO, arXiv 2406.18629",
    needs=_needs,
)
def step_dpo_loss(inputs: LossInputs, beta: float = 0.1, discount: float = 1.0, conservative: bool = False,
                  label_smoothing: float = 0.0) -> LossOutput:
    """Step-level DPO: ``L = -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` with
    ``h = sum_j discount^j [r_j(y_w) - r_j(y_l)]``, the DPO margin of two candidate steps after a
    shared prefix of steps (the prefix is in the prompt).

    * ``discount = 1`` (default) sums every step of each completion: MCTS-DPO (Xie et al. 2024,
      arXiv 2405.00451), whose code sums log-probs from the first token where chosen and rejected
      differ to the end (shared leading tokens of the two steps cancel in ``h``, so this is the
      same value); ``discount = 0`` keeps the first step only: Step-DPO (Lai et al. 2024,
      arXiv 2406.18629), which prefers one step given the correct preceding steps.
    * ``eps = label_smoothing`` (default 0), or with ``conservative=True`` MCTS-DPO's visit-count
      smoothing per pair: ``conf = 1/(1 + N_l/max(1, N_w))``, ``eps = min(1 - conf, 0.5)``, from the
      extras ``chosen_visits`` / ``rejected_visits`` (the ``--conservative`` flag of the released scripts).

    A pair of one-step completions with ``eps = 0`` is exactly ``dpo``. Source: Xie et al. 2024 (official
    code, ``MCTSTrainer.tsrl_step``) and Lai et al. 2024, as above. Shapes: per-token log-probs
    [B, T], step indices [B, T] (``token_stats``); returns loss [B].
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"step_dpo: label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"step_dpo: discount must be in [0, 1], got {discount}")
    r_w = step_logratio(inputs, "chosen", discount)
    r_l = step_logratio(inputs, "rejected", discount)
    z = beta * (r_w - r_l)
    eps = visit_smoothing(inputs).to(z.dtype) if conservative else torch.full_like(z, label_smoothing)
    loss = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    metrics = reward_metrics(beta * r_w, beta * r_l, inputs)
    metrics["step_dpo/eps"] = eps.detach().mean()
    return LossOutput(loss, metrics)
