"""Losses of online methods that need more than one pair's four log-probs.

They read per-example tensors that the online round loop (:mod:`dpokit.online.loop`) supplies in
``LossInputs.extras``:

* ``xpo``: ``ref_is_chosen`` [B] (1 where the chosen response is the reference model's sample);
* ``hypo``: ``side_policy_logps`` / ``side_reference_logps`` / ``side_mask`` [B, K]: log-probs of
  K unlabeled online samples of the pair's prompt (policy with gradient, reference without);
* ``ofs_dpo``: ``ofs_other_chosen_logps`` / ``ofs_other_rejected_logps`` [B]: the second LoRA
  module's log-probs of the pair (with gradient); the ``policy_*`` fields hold the first module's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._numerics import require_extra
from .base import LossInputs, LossOutput, pairwise_metrics
from .registry import Needs, register_loss

Tensor = torch.Tensor


def _pair_loss(h: Tensor, beta: float, loss_type: str) -> Tensor:
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")


@register_loss(
    "xpo",
    family="online",
    source="Xie et al. 2024, Exploratory Preference Optimization, arXiv 2405.21046; TRL experimental XPOTrainer",
    needs=Needs(reference=True, data="pairs", extras=("ref_is_chosen",)),
)
def xpo_loss(inputs: LossInputs, beta: float = 0.1, alpha: float = 1e-5, loss_type: str = "sigmoid") -> LossOutput:
    """XPO: ``L = -logsig(beta h) + alpha * lp(y_ref)`` (``loss_type="ipo"``: ``(h - 1/(2 beta))^2`` + the same term).

    Each pair is one policy sample and one reference-model sample of the same prompt, ordered by a
    judge; ``extras["ref_is_chosen"]`` [B] says which side ``y_ref`` is, so
    ``lp(y_ref) = lp_w`` where it is 1 and ``lp_l`` where it is 0 (summed token log-probs of the
    policy). Minimising ``alpha * lp(y_ref)`` lowers the policy's likelihood of what the reference
    would say: the exploration (optimism) term. ``h`` uses summed log-ratios for both loss types.
    Defaults: ``beta`` 0.1, ``alpha`` 1e-5 (TRL; the paper gives no values).
    Source: Xie et al. 2024, arXiv 2405.21046; TRL ``XPOTrainer._compute_losses``.
    """
    if beta <= 0:
        raise ValueError(f"xpo: beta must be > 0, got {beta}")
    if alpha < 0:
        raise ValueError(f"xpo: alpha must be >= 0, got {alpha}")
    flag = require_extra(inputs, "ref_is_chosen", "xpo")
    inputs.require("policy_chosen_logps", "policy_rejected_logps")
    flag = flag.to(inputs.policy_chosen_logps.dtype)
    ref_logps = flag * inputs.policy_chosen_logps + (1.0 - flag) * inputs.policy_rejected_logps
    loss = _pair_loss(inputs.margin(), beta, loss_type) + alpha * ref_logps
    metrics = pairwise_metrics(inputs, beta)
    metrics["xpo/ref_logps"] = ref_logps.detach().mean()
    metrics["xpo/ref_win_rate"] = flag.detach().mean()
    return LossOutput(loss, metrics)


def rloo_kl_surrogate(policy_logps: Tensor, reference_logps: Tensor, mask: Tensor):
    """Per-example REINFORCE leave-one-out surrogate of ``KL(pi || pi_ref)`` over K samples [B, K].

    ``r_i = lp_i - lr_i``; ``A_i = r_i - mean_{j != i} r_j`` (``A_i = r_i`` when only one sample);
    returns ``(surrogate [B] = (1/k) sum_i sg(A_i) lp_i, kl_estimate [B] = mean_i r_i)``.
    """
    m = mask.to(policy_logps.dtype)
    k = m.sum(-1)
    r = (policy_logps - reference_logps).detach() * m
    total = r.sum(-1, keepdim=True)
    others = (k.unsqueeze(-1) - 1.0).clamp_min(1.0)
    baseline = torch.where(k.unsqueeze(-1) > 1, (total - r) / others, torch.zeros_like(r))
    advantage = (r - baseline) * m
    surrogate = (advantage * policy_logps * m).sum(-1) / k.clamp_min(1.0)
    return surrogate, r.sum(-1) / k.clamp_min(1.0)


@register_loss(
    "hypo",
    family="online",
    source="Song et al. 2024, The Importance of Online Data: Understanding Preference Fine-tuning via "
    "Coverage (HyPO), arXiv 2406.01462",
    needs=Needs(reference=True, data="pairs", extras=("side_policy_logps", "side_reference_logps", "side_mask")),
    verified="partial",
)
def hypo_loss(inputs: LossInputs, beta: float = 0.1, lam: float = 0.05) -> LossOutput:
    """HyPO (PARTIAL): ``L = -logsig(beta h) + lam * (1/k) sum_i sg(A_i) lp(y_i)``, ``y_i ~ pi(.|x)`` online.

    Offline DPO on the labelled pair plus a reverse-KL penalty ``KL(pi || pi_ref)`` estimated on k
    unlabeled online samples of the pair's prompt, with the REINFORCE leave-one-out gradient:
    ``r_i = lp(y_i) - lr(y_i)``, ``A_i = r_i - mean_{j != i} r_j``. Samples come from
    ``extras["side_policy_logps"]``, ``["side_reference_logps"]``, ``["side_mask"]`` [B, K].
    PARTIAL: the structure (offline DPO + lambda x KL on online samples, RLOO with k samples) is
    from the abstract and a summary of the paper's hyperparameter table; the exact estimator,
    ``lam`` and ``k`` were not read in the paper or code (``lam`` 0.05 here is a placeholder).
    Source: Song et al. 2024, arXiv 2406.01462.
    """
    if beta <= 0:
        raise ValueError(f"hypo: beta must be > 0, got {beta}")
    if lam < 0:
        raise ValueError(f"hypo: lam must be >= 0, got {lam}")
    policy = require_extra(inputs, "side_policy_logps", "hypo")
    reference = require_extra(inputs, "side_reference_logps", "hypo")
    mask = require_extra(inputs, "side_mask", "hypo")
    surrogate, kl = rloo_kl_surrogate(policy, reference.to(policy.dtype), mask)
    loss = -F.logsigmoid(beta * inputs.margin()) + lam * surrogate.to(inputs.policy_chosen_logps.dtype)
    metrics = pairwise_metrics(inputs, beta)
    metrics["hypo/kl"] = kl.detach().mean()
    return LossOutput(loss, metrics)


@register_loss(
    "ofs_dpo",
    family="online",
    source="Qi et al. 2024, Online DPO: Online Direct Preference Optimization with Fast-Slow Chasing, "
    "arXiv 2406.05534",
    needs=Needs(reference=True, data="pairs", extras=("ofs_other_chosen_logps", "ofs_other_rejected_logps")),
    verified="partial",
)
class OFSDPOLoss:
    """OFS-DPO (PARTIAL): two LoRA modules A and B on one base; one has the fast role F, the other S.

    ``L_dpo(M) = -logsig(beta h_M)`` (reference = the base model) and the chasing term
    ``L_FS = -logsig(beta [(lp_F(y_w) - lp_S(y_w)) - (lp_F(y_l) - lp_S(y_l))])``. Per example::

        L = L_dpo(F) + alpha * L_FS(F, sg S)   +   L_dpo(S) - alpha * L_FS(sg F, S)

    (F keeps ahead of S; S chases F). ``policy_*`` fields hold module A's log-probs,
    ``extras["ofs_other_chosen_logps"/"ofs_other_rejected_logps"]`` module B's (both with
    gradient). A running mean (``ema``) of each module's ``L_dpo`` is kept while training;
    :meth:`maybe_swap` (called by the round loop every ``chasing_interval`` steps) gives the F role
    to the module with the lower running ``L_dpo``. The slow learning rate is set by the loop.
    PARTIAL: from a third-party re-implementation citing the paper's equations; ``alpha``, the slow
    learning-rate ratio and the swap interval were not verified.
    Source: Qi et al. 2024, arXiv 2406.05534.
    """

    def __init__(self, beta: float = 0.1, alpha: float = 0.1, ema: float = 0.9):
        if beta <= 0:
            raise ValueError(f"ofs_dpo: beta must be > 0, got {beta}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ofs_dpo: ema must be in [0, 1), got {ema}")
        self.beta, self.alpha, self.ema = beta, alpha, ema
        self.fast = 0  # 0: module A (policy_* fields) has the fast role; 1: module B
        self.running = [None, None]
        self.training = True

    def _dpo(self, lp_w: Tensor, lp_l: Tensor, inputs: LossInputs) -> Tensor:
        h = (lp_w - inputs.reference_chosen_logps) - (lp_l - inputs.reference_rejected_logps)
        return -F.logsigmoid(self.beta * h)

    def _chase(self, f_w, f_l, s_w, s_l) -> Tensor:
        return -F.logsigmoid(self.beta * ((f_w - s_w) - (f_l - s_l)))

    def __call__(self, inputs: LossInputs) -> LossOutput:
        inputs.require("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                       "reference_rejected_logps")
        b_w = require_extra(inputs, "ofs_other_chosen_logps", "ofs_dpo").to(inputs.policy_chosen_logps.dtype)
        b_l = require_extra(inputs, "ofs_other_rejected_logps", "ofs_dpo").to(inputs.policy_chosen_logps.dtype)
        modules = [(inputs.policy_chosen_logps, inputs.policy_rejected_logps), (b_w, b_l)]
        dpo = [self._dpo(w, l, inputs) for w, l in modules]
        (f_w, f_l), (s_w, s_l) = modules[self.fast], modules[1 - self.fast]
        chase_fast = self._chase(f_w, f_l, s_w.detach(), s_l.detach())
        chase_slow = self._chase(f_w.detach(), f_l.detach(), s_w, s_l)
        loss = dpo[self.fast] + self.alpha * chase_fast + dpo[1 - self.fast] - self.alpha * chase_slow
        if self.training:
            for i in (0, 1):
                value = float(dpo[i].detach().mean())
                old = self.running[i]
                self.running[i] = value if old is None else self.ema * old + (1.0 - self.ema) * value
        metrics = pairwise_metrics(inputs.replace(policy_chosen_logps=f_w, policy_rejected_logps=f_l), self.beta)
        metrics["ofs/dpo_fast"] = dpo[self.fast].detach().mean()
        metrics["ofs/dpo_slow"] = dpo[1 - self.fast].detach().mean()
        metrics["ofs/chase"] = chase_fast.detach().mean()
        metrics["ofs/fast_module"] = torch.tensor(float(self.fast))
        return LossOutput(loss, metrics)

    def maybe_swap(self) -> bool:
        """Give the fast role to the module with the lower running DPO loss; True if roles changed."""
        fast, slow = self.running[self.fast], self.running[1 - self.fast]
        if fast is None or slow is None or slow >= fast:
            return False
        self.fast = 1 - self.fast
        return True

    def state_dict(self):
        return {"fast": self.fast, "running": list(self.running)}

    def load_state_dict(self, state):
        self.fast = int(state.get("fast", 0))
        self.running = list(state.get("running", [None, None]))
