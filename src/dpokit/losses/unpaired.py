"""Unpaired (binary-feedback) losses: KTO, BCO, unpaired APO-zero, and SFT on single completions.

Each example is one completion with a label. Fields read (all [B]): ``policy_logps``,
``reference_logps`` (summed over completion tokens), ``labels`` (bool, True = desirable) and, for
KTO, ``kl_policy_logps``/``kl_reference_logps``: log-probs of mismatched completions
``(x_i, y_{i-1})`` that the engine computes. ``r(y) = lp(y) - lr(y)``. Pairs can be split into
unpaired examples by the data layer (chosen -> desirable, rejected -> undesirable).
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import torch

from ._distributed import RunningMean, global_mean
from ._numerics import optional_extra
from .base import LossInputs, LossOutput
from .registry import Needs, register_loss

Tensor = torch.Tensor


def _unpaired_logratios(inputs: LossInputs):
    inputs.require("policy_logps", "reference_logps", "labels")
    labels = inputs.labels.to(torch.bool)
    return inputs.policy_logps - inputs.reference_logps, labels


def _unpaired_metrics(rewards: Tensor, labels: Tensor, inputs: LossInputs) -> Dict[str, Tensor]:
    """``rewards/chosen``/``rewards/rejected``: means over desirable/undesirable examples (0 when the
    batch has none; ``count/*`` tell). Every batch reports the same keys, so metric gathering across
    processes stays in step."""
    rewards = rewards.detach()
    logps = inputs.policy_logps.detach()
    d = labels.to(rewards.dtype)
    u = 1.0 - d

    def mean(values: Tensor, mask: Tensor) -> Tensor:
        return (values * mask).sum() / mask.sum().clamp_min(1)

    metrics: Dict[str, Tensor] = {
        "count/desirable": d.sum(),
        "count/undesirable": u.sum(),
        "rewards/chosen": mean(rewards, d),
        "rewards/rejected": mean(rewards, u),
        "logps/chosen": mean(logps, d),
        "logps/rejected": mean(logps, u),
    }
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics


def kto_balance_problem(
    n_desirable: int, n_undesirable: int, lam_D: float = 1.0, lam_U: float = 1.0
) -> Optional[str]:
    """KTO's class-balance rule: the problem with the counts and weights, or None when they keep it.

    The KTO paper (Eq. 8) and TRL recommend ``lam_D * n_D / (lam_U * n_U)`` in ``[1, 4/3]``.
    """
    if n_desirable <= 0 or n_undesirable <= 0:
        return (f"KTO data has {n_desirable} desirable and {n_undesirable} undesirable examples; "
                "both kinds are needed")
    ratio = lam_D * n_desirable / (lam_U * n_undesirable)
    if 1.0 <= ratio <= 4.0 / 3.0:
        return None
    lo = n_undesirable * lam_U / n_desirable
    hi = 4.0 / 3.0 * n_undesirable * lam_U / n_desirable
    return (
        f"KTO: desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = {ratio:.3f} is outside "
        f"[1, 4/3] (n_desirable={n_desirable}, n_undesirable={n_undesirable}); with "
        f"undesirable_weight={lam_U:g}, choose desirable_weight in [{lo:.3f}, {hi:.3f}]"
    )


def kto_weight_warning(
    n_desirable: int, n_undesirable: int, lam_D: float = 1.0, lam_U: float = 1.0
) -> Optional[str]:
    """Check KTO's class-balance rule; warn (and return the message) when it is broken.

    See :func:`kto_balance_problem`. Call it once with the dataset's counts. Returns None when the
    ratio is inside the range. A built loss does the same through ``loss.check_data(labels)``.
    """
    msg = kto_balance_problem(n_desirable, n_undesirable, lam_D, lam_U)
    if msg:
        warnings.warn(msg)
    return msg


def check_class_balance(
    labels: Optional[Sequence[bool]], desirable_weight: float = 1.0, undesirable_weight: float = 1.0, **_
) -> List[str]:
    """``data_check`` of the losses with KTO's desirable/undesirable weights (no warning is raised)."""
    if labels is None:
        return []
    labels = [bool(x) for x in labels]
    desirable = sum(labels)
    msg = kto_balance_problem(desirable, len(labels) - desirable, desirable_weight, undesirable_weight)
    return [msg] if msg else []


@register_loss(
    "kto",
    family="unpaired",
    source="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, "
    "arXiv 2402.01306; TRL KTOTrainer (loss_type='kto'); HALOs KTOTrainer",
    needs=Needs(reference=True, data="unpaired", batch_coupled=True, mismatched_kl=True),
    data_check=check_class_balance,
)
def kto_loss(
    inputs: LossInputs,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO: ``L = lam_D (1 - sig(beta (r - z_ref)))`` if desirable, ``lam_U (1 - sig(beta (z_ref - r)))`` if not.

    ``z_ref = clamp_min(mean_batch sg(kl_policy_logps - kl_reference_logps), 0)``: the KL estimate from
    mismatched completions ``(x_i, y_{i-1})``, with no gradient. Defaults ``beta`` 0.1,
    ``desirable_weight = undesirable_weight = 1`` (TRL names for lam_D, lam_U); keep
    ``lam_D n_D / (lam_U n_U)`` in [1, 4/3] (see :func:`kto_weight_warning`).
    Batch-coupled: when run distributed, ``z_ref`` is the mean over every process's examples
    (gathered sum and count). TRL gathers each process's mean and averages those, which is the same
    when processes hold equally many examples. Same value as TRL ``KTOTrainer`` otherwise.
    Source: Ethayarajh et al. 2024, arXiv 2402.01306.
    """
    r, labels = _unpaired_logratios(inputs)
    inputs.require("kl_policy_logps", "kl_reference_logps")
    z_ref = global_mean(inputs.kl_policy_logps - inputs.kl_reference_logps).clamp_min(0)
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z_ref)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z_ref - r)))
    loss = torch.where(labels, desirable, undesirable)
    metrics = _unpaired_metrics(beta * r, labels, inputs)
    metrics["kl"] = z_ref.detach()
    return LossOutput(loss, metrics)


@register_loss(
    "apo_zero_unpaired",
    family="unpaired",
    source="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv 2408.06266; TRL KTOTrainer loss_type='apo_zero_unpaired'",
    needs=Needs(reference=True, data="unpaired"),
    data_check=check_class_balance,
)
def apo_zero_unpaired_loss(
    inputs: LossInputs,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """Unpaired APO-zero: ``L = lam_D (1 - sig(beta r))`` if desirable, ``lam_U sig(beta r)`` if not.

    Same value as TRL ``KTOTrainer(loss_type="apo_zero_unpaired")``, which also applies the
    desirable/undesirable weights. Default ``beta`` 0.1.
    Source: D'Oosterlinck et al. 2024, arXiv 2408.06266.
    """
    r, labels = _unpaired_logratios(inputs)
    loss = torch.where(
        labels,
        desirable_weight * torch.sigmoid(-beta * r),
        undesirable_weight * torch.sigmoid(beta * r),
    )
    return LossOutput(loss, _unpaired_metrics(beta * r, labels, inputs))


@register_loss(
    "bco",
    family="unpaired",
    source="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, "
    "arXiv 2404.04656; TRL experimental BCOTrainer bco_loss",
    needs=Needs(reference=True, data="unpaired", batch_coupled=True, extras=("udm_weight",)),
)
class BCOLoss:
    """BCO (unpaired): ``L = -logsig(beta r - delta)`` if desirable, ``-w_udm logsig(-(beta r - delta))`` if not.

    ``delta`` is the running mean of every reward ``beta*r`` (desirable and undesirable) seen in
    training, updated with the batch (no gradient) before the loss, only while ``training`` is True,
    and checkpointed by ``state_dict``; TRL's BCOTrainer does the same (``do_train``).
    Underlying distribution matching (UDM, optional): with ``udm=True`` each undesirable example is
    weighted by ``w_udm = clamp(extras["udm_weight"], min_density_ratio, max_density_ratio)``, the
    density ratio ``p(x)/(1-p(x))`` of a prompt classifier (TRL: logistic regression on prompt
    embeddings). Training that classifier is out of scope here: supply the ratio in the data.
    Defaults ``beta`` 0.1, clamp [0.5, 10] (TRL BCOConfig). Batch-coupled: when run distributed the
    running mean gathers every process's rewards. Source: Jung et al. 2024, arXiv 2404.04656.
    """

    def __init__(
        self,
        beta: float = 0.1,
        udm: bool = False,
        min_density_ratio: float = 0.5,
        max_density_ratio: float = 10.0,
    ):
        self.beta = beta
        self.udm = udm
        self.min_density_ratio = min_density_ratio
        self.max_density_ratio = max_density_ratio
        self.running = RunningMean()
        self.training = True

    def __call__(self, inputs: LossInputs) -> LossOutput:
        r, labels = _unpaired_logratios(inputs)
        rewards = self.beta * r
        if self.training:
            self.running.update(rewards)
        delta = self.running.mean
        desirable = -torch.nn.functional.logsigmoid(rewards - delta)
        undesirable = -torch.nn.functional.logsigmoid(-(rewards - delta))
        if self.udm:
            weight = optional_extra(inputs, "udm_weight")
            if weight is None:
                raise ValueError("bco with udm=True needs LossInputs.extras['udm_weight']")
            weight = weight.to(rewards.dtype).clamp(self.min_density_ratio, self.max_density_ratio)
            undesirable = undesirable * weight
        loss = torch.where(labels, desirable, undesirable)
        metrics = _unpaired_metrics(rewards, labels, inputs)
        metrics["bco/delta"] = torch.tensor(float(delta), dtype=loss.dtype, device=loss.device)
        return LossOutput(loss, metrics)

    def state_dict(self):
        return self.running.state_dict()

    def load_state_dict(self, state) -> None:
        self.running.load_state_dict(state)


def check_all_desirable(labels: Optional[Sequence[bool]], **_) -> List[str]:
    """``data_check`` of ``sft_unpaired``: undesirable examples add nothing to its loss; say how many."""
    if labels is None:
        return []
    undesirable = sum(not bool(x) for x in labels)
    if not undesirable:
        return []
    return [f"sft_unpaired: {undesirable} of {len(labels)} examples are labelled undesirable; supervised "
            "fine-tuning trains on the desirable ones only (the others add 0 to the loss)"]


@register_loss(
    "sft_unpaired",
    family="unpaired",
    source="Negative log-likelihood of the kept completion: the fine-tuning step of rejection-sampling "
    "fine-tuning (RAFT, Dong et al. 2023, arXiv 2304.06767; DPA's iterative RSF, arXiv 2402.18571)",
    needs=Needs(reference=False, data="unpaired"),
    data_check=check_all_desirable,
)
def sft_unpaired_loss(inputs: LossInputs, length_normalize: bool = True) -> LossOutput:
    """SFT on single completions: ``L = -lp(y)/|y|`` (token mean; ``length_normalize=False``: ``-lp(y)``)
    for a desirable example, ``0`` for an undesirable one (:func:`check_all_desirable` warns about them).

    On the desirable examples it equals the pairwise ``sft`` loss on a pair whose chosen response is ``y``.
    Source: the NLL of the selected sample, as rejection-sampling fine-tuning trains it (RAFT,
    arXiv 2304.06767; DPA's iterative RSF, arXiv 2402.18571).
    """
    inputs.require("policy_logps", "labels")
    labels = inputs.labels.to(torch.bool)
    nll = -(inputs.length_normalized(inputs.policy_logps, "unpaired") if length_normalize else inputs.policy_logps)
    loss = torch.where(labels, nll, torch.zeros_like(nll))
    d = labels.to(nll.dtype)
    return LossOutput(loss, {"nll": (nll.detach() * d).sum() / d.sum().clamp_min(1), "count/desirable": d.sum()})
