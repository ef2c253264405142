"""The tensors a loss sees and what it returns.

A loss never sees a model. The log-prob engine fills a :class:`LossInputs` with exactly what the
loss's registry entry declares it needs (see :class:`dpokit.losses.registry.Needs`) and the loss
returns a :class:`LossOutput` holding a per-example loss and a dictionary of scalar metrics.

Shapes (B = batch of pairs, T = longest completion in the batch, K = responses per list):

* ``policy_chosen_logps``, ``policy_rejected_logps``: [B], summed over completion tokens.
* ``reference_chosen_logps``, ``reference_rejected_logps``: [B] or ``None`` (reference-free).
* ``chosen_lengths``, ``rejected_lengths``: [B], number of completion tokens (float or int).
* ``*_token_logps``: [B, T] per-token log-probs, zero where ``*_token_mask`` is False.
* ``*_token_mask``: [B, T] bool, True on completion tokens.
* ``token_stats``: per-token statistics some losses ask for, keyed like
  ``"chosen/ref_kl"`` -> [B, T] (computed by the engine chunk by chunk).
* ``list_*``: [B, K] tensors for listwise losses, ``list_mask`` [B, K] marks real responses.
* ``list_*_token_logps``, ``list_token_mask``: [B, K, T] per-token log-probs of the K responses
  (zeros outside the mask), for list losses whose ``Needs.token_logps`` is set (token-level GRPO).
* ``policy_prompt_logps``, ``prompt_lengths``: [B], the policy's summed log-probs of the prompt
  tokens after the first (each predicted from the tokens before it) and their number; only for
  losses whose ``Needs.prompt_logps`` is set (ORPO's NLL over prompt and response).
* ``labels``: [B] bool for unpaired data (True = desirable); unpaired losses read the
  ``policy_logps``/``reference_logps`` fields ([B]) and, for KTO's KL estimate,
  ``kl_policy_logps``/``kl_reference_logps`` ([B], mismatched completions).
* ``extras``: any further per-example tensors from the data (``weights``, ``margins``,
  ``scores``, ``token_weights`` ...), keyed by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, Optional

import torch

Tensor = torch.Tensor


@dataclass
class LossInputs:
    policy_chosen_logps: Optional[Tensor] = None
    policy_rejected_logps: Optional[Tensor] = None
    reference_chosen_logps: Optional[Tensor] = None
    reference_rejected_logps: Optional[Tensor] = None
    chosen_lengths: Optional[Tensor] = None
    rejected_lengths: Optional[Tensor] = None
    # per-token (padded to the longest completion, zeros outside the mask)
    policy_chosen_token_logps: Optional[Tensor] = None
    policy_rejected_token_logps: Optional[Tensor] = None
    reference_chosen_token_logps: Optional[Tensor] = None
    reference_rejected_token_logps: Optional[Tensor] = None
    chosen_token_mask: Optional[Tensor] = None
    rejected_token_mask: Optional[Tensor] = None
    token_stats: Dict[str, Tensor] = field(default_factory=dict)
    # prompt tokens after the first, under the policy (Needs.prompt_logps)
    policy_prompt_logps: Optional[Tensor] = None
    prompt_lengths: Optional[Tensor] = None
    # listwise: K responses per prompt
    list_policy_logps: Optional[Tensor] = None
    list_reference_logps: Optional[Tensor] = None
    list_lengths: Optional[Tensor] = None
    list_scores: Optional[Tensor] = None
    list_mask: Optional[Tensor] = None
    list_policy_token_logps: Optional[Tensor] = None
    list_reference_token_logps: Optional[Tensor] = None
    list_token_mask: Optional[Tensor] = None
    # unpaired: one labelled completion per example
    policy_logps: Optional[Tensor] = None
    reference_logps: Optional[Tensor] = None
    lengths: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    kl_policy_logps: Optional[Tensor] = None
    kl_reference_logps: Optional[Tensor] = None
    # anything else supplied with the data
    extras: Dict[str, Tensor] = field(default_factory=dict)

    # ---- helpers every pairwise loss uses -------------------------------------------------
    def require(self, *names: str) -> None:
        """Raise a clear error when a field the loss needs was not provided."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                "this loss needs LossInputs." + ", LossInputs.".join(missing)
                + " but it was not provided"
            )

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        raise ValueError("LossInputs holds no tensors")

    def has_reference(self) -> bool:
        return self.reference_chosen_logps is not None and self.reference_rejected_logps is not None

    def chosen_logratios(self) -> Tensor:
        """r(y_w) = lp(y_w) - lr(y_w) (a reference is required; reference-free losses use lp)."""
        self.require("policy_chosen_logps", "reference_chosen_logps")
        return self.policy_chosen_logps - self.reference_chosen_logps

    def rejected_logratios(self) -> Tensor:
        """r(y_l) = lp(y_l) - lr(y_l)."""
        self.require("policy_rejected_logps", "reference_rejected_logps")
        return self.policy_rejected_logps - self.reference_rejected_logps

    def margin(self) -> Tensor:
        """The DPO margin h = r(y_w) - r(y_l)."""
        return self.chosen_logratios() - self.rejected_logratios()

    def mean_logps(self, which: str, model: str = "policy") -> Tensor:
        """Token-mean log-prob ``lp(y)/|y|`` of ``which`` in {"chosen", "rejected"}."""
        logps = getattr(self, f"{model}_{which}_logps")
        if logps is None or getattr(self, f"{which}_lengths") is None:
            raise ValueError(f"this loss needs {model}_{which}_logps and {which}_lengths")
        return self.length_normalized(logps, which)

    def length_normalized(self, x: Tensor, which: str) -> Tensor:
        """``x / max(length, 1)`` with the token counts of ``which``: ``"chosen"``, ``"rejected"``,
        ``"prompt"`` ([B]), ``"list"`` ([B, K]) or ``"unpaired"`` ([B]); lengths cast to ``x``'s dtype."""
        name = _LENGTHS.get(which)
        if name is None:
            raise ValueError(f"length_normalized: which must be one of {sorted(_LENGTHS)}, got {which!r}")
        self.require(name)
        return x / getattr(self, name).to(x.dtype).clamp_min(1)

    def replace(self, **changes) -> "LossInputs":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return LossInputs(**values)


_LENGTHS = {"chosen": "chosen_lengths", "rejected": "rejected_lengths", "prompt": "prompt_lengths",
            "list": "list_lengths", "unpaired": "lengths"}


@dataclass
class LossOutput:
    """``loss``: per-example loss [B] (the trainer takes the mean); ``metrics``: scalar tensors."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)


def reward_metrics(
    chosen_rewards: Tensor, rejected_rewards: Tensor, inputs: Optional[LossInputs] = None
) -> Dict[str, Tensor]:
    """The field's standard implicit-reward metrics (names as TRL logs them).

    With ``inputs``, also ``logps/chosen`` and ``logps/rejected``: the batch means of the policy's
    summed log-probs of the chosen and rejected completions (each where it is present).
    """
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
    if inputs is not None:
        if inputs.policy_chosen_logps is not None:
            metrics["logps/chosen"] = inputs.policy_chosen_logps.detach().mean()
        if inputs.policy_rejected_logps is not None:
            metrics["logps/rejected"] = inputs.policy_rejected_logps.detach().mean()
    return metrics


def pairwise_metrics(inputs: LossInputs, beta: float) -> Dict[str, Tensor]:
    """``rewards/*`` with reward ``beta * r(y)`` plus ``logps/*`` of the policy."""
    return reward_metrics(beta * inputs.chosen_logratios(), beta * inputs.rejected_logratios(), inputs)
