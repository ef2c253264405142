"""Reward-model kinds: what a kind trains on, its loss, and P(chosen > rejected) for evaluation.

``KINDS[name]`` is a :class:`RewardModelKind`; ``dpokit train-rm --kind NAME`` and
``dpokit eval-rm`` read it, and know no kind by name. Every kind is an
``AutoModelForSequenceClassification`` (safetensors) whose outputs the kind interprets; the saved
``config.json`` holds ``dpokit_reward_model = {"kind": ..., ...}`` (absent: ``bt``).

* ``bt``: one output, the Bradley-Terry loss ``-logsig(r_w - r_l - m)`` (:mod:`.reward_model`).
* ``gpm``: ``2k`` (+ ``k`` gate) outputs, the general preference loss (:mod:`.gpm`).
* ``multi``: one output per objective, regressed on ``scores_<name>`` columns (:mod:`.multi_objective`);
  pairs are compared by the scalarized reward ``v . r`` along a unit direction ``v``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

from . import gpm as G
from . import multi_objective as MO
from .rm_io import reward_model_scores

KINDS: Dict[str, "RewardModelKind"] = {}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: Optional[torch.Tensor] = None):
    """Per-pair Bradley-Terry loss ``-logsig(r_w - r_l - m)`` (``m``: an optional margin per pair)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return -torch.nn.functional.logsigmoid(diff)


def register_kind(cls):
    KINDS[cls.name] = cls()
    return cls


def kind_of(model) -> "RewardModelKind":
    """The kind a loaded model was saved as (``config.dpokit_reward_model.kind``; default ``bt``)."""
    name = (getattr(model.config, "dpokit_reward_model", None) or {}).get("kind", "bt")
    if name not in KINDS:
        raise ValueError(f"reward model kind {name!r} in config.json is not one of {', '.join(sorted(KINDS))}")
    return KINDS[name]


class RewardModelKind:
    name: ClassVar[str] = ""
    data: ClassVar[str] = "pairs"  # what train-rm reads: "pairs" or "scored" (MO.load_scored)

    def settings(self, args, train_rows: Sequence[Any]) -> Dict[str, Any]:
        """What goes into ``config.dpokit_reward_model`` (``kind`` added by the caller)."""
        return {}

    def num_labels(self, settings: Dict[str, Any]) -> int:
        return 1

    def load(self, source: Any, limit: Optional[int] = None) -> List[Any]:
        from ..data.formats import load_examples

        return load_examples(source, "pairs", limit=limit)

    def batch_loss(self, model, tokenizer, batch: Sequence[Any], max_length: int,
                   margin_column: Optional[str] = None) -> Tuple[torch.Tensor, float]:
        raise NotImplementedError

    def pair_probabilities(self, model, tokenizer, pairs: Sequence[Any], batch_size: int, max_length: int,
                           direction: Optional[Sequence[float]] = None) -> torch.Tensor:
        """``P(chosen > rejected)`` [N] under the model."""
        raise NotImplementedError


def _margin(batch, column, device):
    return torch.tensor([p.extras[column] for p in batch], device=device) if column else None


@register_kind
class BradleyTerryKind(RewardModelKind):
    name = "bt"

    def batch_loss(self, model, tokenizer, batch, max_length, margin_column=None):

        prompts = [p.prompt for p in batch]
        scores = reward_model_scores(model, tokenizer, prompts + prompts, [p.chosen for p in batch]
                                     + [p.rejected for p in batch], len(batch) * 2, max_length, grad=True)
        chosen, rejected = scores[:len(batch)], scores[len(batch):]
        loss = bradley_terry_loss(chosen, rejected, _margin(batch, margin_column, scores.device)).mean()
        return loss, float((chosen > rejected).float().mean())

    def pair_probabilities(self, model, tokenizer, pairs, batch_size, max_length, direction=None):
        prompts = [p.prompt for p in pairs]
        chosen = reward_model_scores(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length)
        rejected = reward_model_scores(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length)
        return torch.sigmoid(chosen - rejected)


@register_kind
class GPMKind(RewardModelKind):
    name = "gpm"

    def settings(self, args, train_rows):
        dim = int(args.gpm_dim)
        G.skew_operator(dim)  # validates the dimension
        return {"dim": dim, "prompt_head": bool(args.gpm_prompt_head), "tau": float(args.gpm_tau),
                "normalize": bool(args.gpm_normalize)}

    def num_labels(self, settings):
        return G.num_outputs(settings["dim"], settings["prompt_head"])

    def _scores(self, model, tokenizer, pairs, batch_size, max_length, grad):
        prompts = [p.prompt for p in pairs]
        lam = G.unique_eigenvalues(model, tokenizer, prompts, batch_size, max_length, grad)
        v = G.gpm_embed(model, tokenizer, prompts + prompts, [p.chosen for p in pairs]
                        + [p.rejected for p in pairs], batch_size, max_length, grad)
        return v[:len(pairs)], v[len(pairs):], lam

    def batch_loss(self, model, tokenizer, batch, max_length, margin_column=None):
        v_w, v_l, lam = self._scores(model, tokenizer, batch, len(batch) * 2, max_length, True)
        tau = G.gpm_settings(model).get("tau", 0.1)
        loss = G.gpm_loss(v_w, v_l, lam, tau, _margin(batch, margin_column, v_w.device)).mean()
        return loss, float((G.gpm_score(v_w, v_l, lam) > 0).float().mean())

    def pair_probabilities(self, model, tokenizer, pairs, batch_size, max_length, direction=None):
        v_w, v_l, lam = self._scores(model, tokenizer, pairs, batch_size, max_length, False)
        return torch.sigmoid(G.gpm_score(v_w, v_l, lam) / G.gpm_settings(model).get("tau", 0.1))


@register_kind
class MultiObjectiveKind(RewardModelKind):
    name = "multi"
    data = "scored"

    def settings(self, args, train_rows):
        objectives = list(train_rows[0].scores) if train_rows else []
        return {"objectives": objectives}

    def num_labels(self, settings):
        return len(settings["objectives"])

    def load(self, source, limit=None):
        return MO.load_scored(source, limit=limit)

    def batch_loss(self, model, tokenizer, batch, max_length, margin_column=None):
        objectives = MO.objectives_of(model)
        rewards = MO.reward_vectors(model, tokenizer, [r.prompt for r in batch], [r.response for r in batch],
                                    len(batch), max_length, grad=True)
        target = torch.tensor([[r.scores[name] for name in objectives] for r in batch], device=rewards.device)
        loss = MO.regression_loss(rewards, target.to(rewards.dtype)).mean()
        return loss, float(-loss.item())

    def pair_probabilities(self, model, tokenizer, pairs, batch_size, max_length, direction=None):
        objectives = MO.objectives_of(model)
        v = MO.unit_direction(direction if direction is not None else [1.0] * len(objectives), len(objectives))
        prompts = [p.prompt for p in pairs]
        r_w = MO.reward_vectors(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length)
        r_l = MO.reward_vectors(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length)
        return torch.sigmoid(MO.scalarize(r_w, v) - MO.scalarize(r_l, v))


# ------------------------------------------------------------------------------------------------
# Metrics over pairs: accuracy and calibration
# ------------------------------------------------------------------------------------------------
def pair_metrics(probabilities: Sequence[float], bins: int = 10) -> Dict[str, Any]:
    """Accuracy (ties count 1/2), Brier score ``mean (1 - P)^2`` and expected calibration error of
    ``P(chosen > rejected)``.

    ECE uses the confidence ``c = max(P, 1 - P)`` of the predicted winner and whether it is right
    (the same for either order of a pair), in ``bins`` equal-width bins over [0.5, 1]:
    ``ECE = sum_b (n_b / n) |mean c_b - accuracy_b|``.
    """
    p = torch.as_tensor(list(probabilities), dtype=torch.float64)
    n = int(p.numel())
    if n == 0:
        return {"n": 0, "accuracy": None, "brier": None, "ece": None}
    correct = (p > 0.5).double() + 0.5 * (p == 0.5).double()
    conf = torch.maximum(p, 1 - p)
    edges = torch.linspace(0.5, 1.0, bins + 1, dtype=torch.float64)
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += float(mask.double().mean() * (conf[mask].mean() - correct[mask].mean()).abs())
    return {"n": n, "accuracy": float(correct.mean()), "brier": float(((1 - p) ** 2).mean()), "ece": ece,
            "mean_probability": float(p.mean())}


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(float(p), eps), 1 - eps)
    return math.log(p / (1 - p))
