"""Modifiers: changes that apply to any pairwise loss, switched on from config.

    loss = apply_modifiers(get_loss("dpo", beta=0.1), {"ld_alpha": 0.5, "wpo": {"clamp": True}})
    loss = build_loss({"name": "dpo", "beta": 0.1, "modifiers": {"ld_alpha": 0.5}})

The result has the interface of any loss (``__call__(inputs) -> LossOutput``, ``.name``, ``.needs``,
``.training``, ``state_dict``, ``load_state_dict``, ``describe()``); its ``.needs`` is the union of the
loss's and the modifiers' needs, so the engine computes what they read and the trainer never
learns which modifiers are on.

Modifiers (config key, aliases):

* ``ld_alpha`` (``ld_dpo``): LD-DPO length desensitisation of the sequence log-probs (policy and
  reference) before the loss. Shorthand ``ld_alpha: 0.5``.
* ``wpo`` (``use_weighting``): WPO per-example weight from per-token ``sum_p2`` statistics.
* ``beta_dpo``: batch-adaptive beta with EMA statistics and margin-based filtering (stateful).
* ``madpo``: MADPO instance weights from reward-model margins ``extras["rm_margin"]``.

Order of application: ``ld_alpha`` transforms the inputs; ``beta_dpo`` picks beta and the examples;
``wpo`` and ``madpo`` multiply the per-example loss by detached weights.
MODPO changes the margin itself and is the registered loss ``modpo``; TR-DPO's reference
synchronisation is a trainer callback, not a modifier.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ._distributed import broadcast_from_first, gather_detached_with_offset
from ._numerics import capped_exp, masked_mean, masked_sum, require_extra
from .base import LossInputs, LossOutput
from .registry import CompositeLoss, ConfiguredLoss, LossSpec, Needs, Registry, _unique, get_loss, make_spec

Tensor = torch.Tensor

MODIFIERS = Registry("loss modifier")
ModifierSpec = LossSpec


def register_modifier(
    name: str,
    *,
    source: str,
    needs: Needs,
    aliases: Sequence[str] = (),
    verified: str = "verified",
    shorthand: Optional[str] = None,
):
    """Decorator registering a :class:`Modifier` subclass (same spec class as a loss, family
    ``modifiers``); ``needs`` are added to the wrapped loss's, ``shorthand`` names the
    hyperparameter a bare number in the config sets."""

    def decorator(cls):
        MODIFIERS.add(make_spec(name, cls, family="modifiers", source=source, needs=needs, aliases=aliases,
                                verified=verified, shorthand=shorthand))
        cls.key = name
        return cls

    return decorator


def list_modifiers() -> List[LossSpec]:
    return MODIFIERS.all()


def get_modifier_spec(name: str) -> LossSpec:
    return MODIFIERS.get(name)


class Modifier:
    """Base class: override ``transform`` (inputs -> inputs) and/or ``weights`` (inputs -> [B]).

    Declared behaviour, read by :class:`ModifiedLoss` (no modifier is known there by name):

    * ``order``: application order (lower first).
    * ``per_example``: the modifier weights or selects individual examples, so the wrapped loss
      must be per example (``Needs.per_example``; AOT's sorted losses are not).
    * ``runs_loss``: the modifier calls the wrapped loss itself through :meth:`run` (beta-DPO
      chooses the loss's ``beta``); at most one such modifier per loss, and :meth:`check_base`
      says whether it can wrap a given loss.
    """

    key = "modifier"
    order = 50
    per_example = False
    runs_loss = False

    def __init__(self):
        self.last_metrics: Dict[str, Tensor] = {}

    def transform(self, inputs: LossInputs) -> LossInputs:
        return inputs

    def weights(self, inputs: LossInputs) -> Optional[Tensor]:
        return None

    def check_base(self, base) -> None:
        """Raise ``ValueError`` when this modifier cannot wrap the loss ``base``."""

    def run(self, base, inputs: LossInputs, training: bool) -> LossOutput:
        """Compute the wrapped loss (only for ``runs_loss`` modifiers)."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def hparams(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in MODIFIERS.specs[self.key].defaults}

    def describe(self) -> str:
        return f"{self.key}(" + ", ".join(f"{k}={v}" for k, v in self.hparams().items()) + ")"


# ------------------------------------------------------------------------------------------------
def ld_sequence_logps(token_logps: Tensor, mask: Tensor, public_len: Tensor, alpha: float) -> Tensor:
    """``sum_{t <= l_p} lp_t + alpha * sum_{t > l_p} lp_t`` where ``t`` counts completion tokens."""
    mask = mask.to(torch.bool)
    pos = mask.long().cumsum(dim=-1)
    shared = mask & (pos <= public_len.unsqueeze(-1))
    tail = mask & (pos > public_len.unsqueeze(-1))
    return masked_sum(token_logps, shared) + alpha * masked_sum(token_logps, tail)


@register_modifier(
    "ld_alpha",
    source="Liu et al. 2024, LD-DPO (length desensitization of DPO), arXiv 2409.06411; "
    "TRL DPOConfig ld_alpha",
    needs=Needs(reference=False, data="pairs", token_logps=True),
    aliases=("ld_dpo",),
    shorthand="alpha",
)
class LDAlpha(Modifier):
    """LD-DPO: ``lp~(y) = sum_{t <= l_p} lp_t + alpha sum_{t > l_p} lp_t``, ``l_p = min(|y_w|, |y_l|)``.

    Rebuilds the summed log-probs of both completions from per-token log-probs before the loss
    runs, for the policy and (``apply_to_reference=True``, as TRL HEAD) the reference; TRL <= v0.25
    applied it to the policy only (``apply_to_reference=False``). ``alpha`` in [0, 1]: 1 leaves the
    loss unchanged, 0 truncates both completions to their shared length; TRL suggests 0.5 to start.
    Only the sequence sums change (the per-token tensors and lengths are left as they are).
    Source: Liu et al. 2024, arXiv 2409.06411; TRL ``ld_alpha``.
    """

    order = 10

    def __init__(self, alpha: float = 0.5, apply_to_reference: bool = True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.apply_to_reference = apply_to_reference

    def transform(self, inputs: LossInputs) -> LossInputs:
        inputs.require("policy_chosen_token_logps", "policy_rejected_token_logps",
                       "chosen_token_mask", "rejected_token_mask")
        m_w, m_l = inputs.chosen_token_mask, inputs.rejected_token_mask
        public = torch.minimum(m_w.long().sum(-1), m_l.long().sum(-1))
        changes = {
            "policy_chosen_logps": ld_sequence_logps(inputs.policy_chosen_token_logps, m_w, public, self.alpha),
            "policy_rejected_logps": ld_sequence_logps(inputs.policy_rejected_token_logps, m_l, public, self.alpha),
        }
        if self.apply_to_reference and inputs.has_reference():
            if inputs.reference_chosen_token_logps is None or inputs.reference_rejected_token_logps is None:
                raise ValueError(
                    "ld_alpha needs the reference's per-token log-probs (or apply_to_reference=False)"
                )
            changes["reference_chosen_logps"] = ld_sequence_logps(
                inputs.reference_chosen_token_logps, m_w, public, self.alpha)
            changes["reference_rejected_logps"] = ld_sequence_logps(
                inputs.reference_rejected_token_logps, m_l, public, self.alpha)
        return inputs.replace(**changes)


# ------------------------------------------------------------------------------------------------
@register_modifier(
    "wpo",
    source="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, "
    "arXiv 2406.11827, Eq. 2; official wzhouad/WPO; TRL DPOConfig use_weighting",
    needs=Needs(reference=False, data="pairs", token_logps=True, token_stats=("sum_p2",)),
    aliases=("use_weighting",),
)
class WPOWeights(Modifier):
    """WPO: ``loss_i *= sg(min(w(y_w) w(y_l), 1))``, ``w(y) = exp(mean_t [lp_t - log sum_v p(v|y_<t)^2])``.

    ``sum_v p^2`` per position comes from ``token_stats["chosen/sum_p2"]``/``["rejected/sum_p2"]`` ([B, T],
    computed by the engine from the policy's full logits); ``lp_t`` are the policy's per-token
    log-probs; no gradient flows through the weight. ``clamp=True`` caps the weight at 1 as the
    official code and TRL v0.25 do; TRL HEAD does not clamp (``clamp=False``). The official recipe
    keeps cDPO label smoothing and uses beta 0.01: combine with ``cdpo`` for that.
    Source: Zhou et al. 2024, arXiv 2406.11827.
    """

    order = 60
    per_example = True

    def __init__(self, clamp: bool = True):
        super().__init__()
        self.clamp = clamp

    def _mean_aligned(self, inputs: LossInputs, which: str) -> Tensor:
        lp = getattr(inputs, f"policy_{which}_token_logps")
        mask = getattr(inputs, f"{which}_token_mask")
        key = f"{which}/sum_p2"
        sum_p2 = inputs.token_stats.get(key) if inputs.token_stats else None
        if lp is None or mask is None or sum_p2 is None:
            raise ValueError(f"wpo needs policy_{which}_token_logps, {which}_token_mask and "
                             f"token_stats[{key!r}]")
        tiny = torch.finfo(lp.dtype).tiny
        aligned = lp.detach() - torch.log(sum_p2.detach().to(lp.dtype).clamp_min(tiny))
        return masked_mean(aligned, mask)

    def weights(self, inputs: LossInputs) -> Tensor:
        log_w = self._mean_aligned(inputs, "chosen") + self._mean_aligned(inputs, "rejected")
        if self.clamp:
            log_w = log_w.clamp(max=0.0)
        w = capped_exp(log_w)
        self.last_metrics = {"wpo/weight": w.mean()}
        return w


# ------------------------------------------------------------------------------------------------
@register_modifier(
    "madpo",
    source="Rho 2025, MADPO (margin-adaptive DPO), arXiv 2510.05342; official "
    "sirano1004/Margin-Apative-Direct-Preference-Optimization utils/loss_functions.py MADPOLoss",
    needs=Needs(reference=False, data="pairs", extras=("rm_margin",)),
)
class MADPOWeights(Modifier):
    """MADPO: ``loss_i *= sg(w(m_i))``, ``w = sig(c(m) m)/sig(m)`` if ``m > -tau`` else 1.

    ``m = r_phi(x, y_w) - r_phi(x, y_l)`` is a trained reward model's margin, supplied in
    ``extras["rm_margin"]`` [B] (stage 1 of MADPO, outside the loss);
    ``c(m) = c_min + (c_max - c_min) / (1 + (c_max - 1)/(1 - c_min) * exp(lmbda (|m| - tau)))``:
    hard pairs (small ``|m|``) get ``c ~ c_max``, easy ones ``c -> c_min``. Defaults from the official
    notebook: ``c_max`` 2, ``c_min`` 0.5, ``lmbda`` 1, ``tau = log(0.999/0.001)``; use with ``dpo``, beta 0.1.
    Source: Rho 2025, arXiv 2510.05342.
    """

    order = 60
    per_example = True

    def __init__(self, c_max: float = 2.0, c_min: float = 0.5, lmbda: float = 1.0,
                 tau: float = math.log(0.999 / 0.001)):
        super().__init__()
        if not 0.0 < c_min < 1.0 < c_max:
            raise ValueError(f"madpo: need 0 < c_min < 1 < c_max, got c_min={c_min}, c_max={c_max}")
        self.c_max, self.c_min, self.lmbda, self.tau = c_max, c_min, lmbda, tau

    def weights(self, inputs: LossInputs) -> Tensor:
        m = require_extra(inputs, "rm_margin", "madpo").detach()
        m = m.to(inputs.policy_chosen_logps.dtype if inputs.policy_chosen_logps is not None else torch.float32)
        k = (self.c_max - 1.0) / (1.0 - self.c_min)
        c = self.c_min + (self.c_max - self.c_min) / (1.0 + k * capped_exp(self.lmbda * (m.abs() - self.tau)))
        w = torch.exp(F.logsigmoid(c * m) - F.logsigmoid(m))
        w = torch.where(m > -self.tau, w, torch.ones_like(w))
        self.last_metrics = {"madpo/weight": w.mean()}
        return w


# ------------------------------------------------------------------------------------------------
@register_modifier(
    "beta_dpo",
    source="Wu et al. 2024, beta-DPO: Direct Preference Optimization with Dynamic beta, "
    "arXiv 2407.08639; official junkangwu/beta-DPO trainers.py",
    needs=Needs(reference=False, data="pairs", batch_coupled=True),
)
class BetaDPO(Modifier):
    """beta-DPO: batch-adaptive ``beta`` with margin-based data filtering (official code).

    With ``M_i = h_i`` (un-scaled margin, no gradient) gathered over all processes:

    1. EMA, before the loss, only while training: ``M0 <- ema M0 + (1-ema) mean(M)``,
       ``S0 <- ema S0 + (1-ema) std(M)`` (unbiased std; both start at 0 as in the official code).
    2. Filtering (training): ``w_i = exp(-0.5 ((M_i - M0)/S0)^2)``; sample ``floor(N (1 - rho))``
       examples without replacement with probabilities ~ ``w`` (drawn on rank 0, broadcast).
    3. ``beta = max(beta0 (1 + a (mean_selected M - M0)), min_beta)``, detached; ``beta0`` is the
       wrapped loss's ``beta``.
    4. ``L = sum_selected L_i(beta) / #selected`` (returned per example: ``L_i * 1[selected] * B/#selected``).

    Defaults (official README): ``a`` 0.6, ``rho`` 0.2, ``ema`` 0.9, ``min_beta`` 1e-3; the paper pairs
    it with DPO, beta0 0.1; here it wraps any registered function loss with a ``beta``. Differences
    from the official code: in evaluation (``training`` False) the statistics are not updated and no
    examples are dropped (beta uses the mean margin of the whole batch), while the official code
    updates the EMA and samples in evaluation too; ``S0`` is floored at 1e-6 and an all-zero ``w``
    falls back to uniform sampling, where the official code would divide by zero or fail.
    Batch-coupled: margins are gathered across processes. Source: Wu et al. 2024, arXiv 2407.08639.
    """

    order = 30
    per_example = True
    runs_loss = True

    def __init__(self, a: float = 0.6, rho: float = 0.2, ema: float = 0.9, min_beta: float = 1e-3):
        super().__init__()
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"beta_dpo: rho must be in [0, 1), got {rho}")
        self.a, self.rho, self.ema, self.min_beta = a, rho, ema, min_beta
        self.gap_mean = 0.0
        self.gap_std = 0.0

    def check_base(self, base) -> None:
        ok = isinstance(base, ConfiguredLoss) and not base.spec.stateful and "beta" in base.hparams
        if not ok:
            raise ValueError("beta_dpo needs a single stateless loss with a 'beta' hyperparameter "
                             f"(e.g. dpo); got {base.describe()}")

    def run(self, base: ConfiguredLoss, inputs: LossInputs, training: bool) -> LossOutput:
        h_local = inputs.margin().detach()
        h_all, offset = gather_detached_with_offset(h_local)
        n = h_all.shape[0]
        if training:
            batch_std = float(h_all.std()) if n > 1 else 0.0
            self.gap_mean = self.ema * self.gap_mean + (1.0 - self.ema) * float(h_all.mean())
            self.gap_std = self.ema * self.gap_std + (1.0 - self.ema) * batch_std
            std = max(self.gap_std, 1e-6)
            w = torch.exp(-0.5 * ((h_all.double() - self.gap_mean) / std) ** 2)
            if not torch.isfinite(w).all() or float(w.sum()) <= 0.0:
                w = torch.ones_like(w)
            n_keep = max(1, int(n * (1.0 - self.rho)))
            idx = torch.multinomial(w, n_keep, replacement=False)
            mask_all = torch.zeros(n, dtype=h_all.dtype, device=h_all.device)
            mask_all[idx.to(h_all.device)] = 1.0
            mask_all = broadcast_from_first(mask_all)
            used = h_all[mask_all.bool()].mean()
        else:
            mask_all = torch.ones(n, dtype=h_all.dtype, device=h_all.device)
            used = h_all.mean()
        beta0 = base.hparams["beta"]
        beta = max(beta0 * (1.0 + self.a * (float(used) - self.gap_mean)), self.min_beta)
        out = base.spec.impl(inputs, **{**base.hparams, "beta": beta})
        mask = mask_all[offset: offset + h_local.shape[0]].to(out.loss.dtype)
        count = float(mask.sum())
        loss = out.loss * mask * (h_local.shape[0] / max(count, 1.0))
        as_tensor = lambda v: torch.tensor(v, dtype=out.loss.dtype, device=out.loss.device)  # noqa: E731
        self.last_metrics = {
            "beta_dpo/beta": as_tensor(beta),
            "beta_dpo/gap_mean": as_tensor(self.gap_mean),
            "beta_dpo/gap_std": as_tensor(self.gap_std),
            "beta_dpo/selected_fraction": mask.mean().detach(),
        }
        return LossOutput(loss, out.metrics)

    def state_dict(self) -> Dict[str, Any]:
        return {"gap_mean": self.gap_mean, "gap_std": self.gap_std}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.gap_mean = float(state["gap_mean"])
        self.gap_std = float(state["gap_std"])


# ------------------------------------------------------------------------------------------------
LossLike = Union[ConfiguredLoss, CompositeLoss]


class ModifiedLoss:
    """A loss with modifiers applied; same interface as :class:`ConfiguredLoss`."""

    def __init__(self, base: LossLike, modifiers: List[Modifier]):
        if base.needs.data != "pairs":
            raise ValueError(f"loss modifiers apply to pairwise losses; {base.name!r} is on {base.needs.data}")
        self.base = base
        self.modifiers = sorted(modifiers, key=lambda m: m.order)
        keys = [m.key for m in self.modifiers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a modifier was given twice: {keys}")
        per_example = [m.key for m in self.modifiers if m.per_example]
        if per_example and not base.needs.per_example:
            raise ValueError(
                f"{base.name!r} is not per example (it sorts the batch), so per-example modifiers "
                f"{per_example} cannot apply to it"
            )
        runners = [m for m in self.modifiers if m.runs_loss]
        if len(runners) > 1:
            raise ValueError(f"modifiers {[m.key for m in runners]} each run the loss; use one of them")
        for m in self.modifiers:
            m.check_base(base)
        self._runner = runners[0] if runners else None
        needs = base.needs
        for m in self.modifiers:
            needs = needs.union(MODIFIERS.specs[m.key].needs)
        self._needs = needs
        self.training = True

    @property
    def name(self) -> str:
        return f"{self.base.name}[{','.join(m.key for m in self.modifiers)}]"

    @property
    def needs(self) -> Needs:
        return self._needs

    def __call__(self, inputs: LossInputs) -> LossOutput:
        self.base.training = self.training
        x = inputs
        for m in self.modifiers:
            x = m.transform(x)
        if self._runner is not None:
            out = self._runner.run(self.base, x, self.training)
        else:
            out = self.base(x)
        loss = out.loss
        for m in self.modifiers:
            w = m.weights(x)
            if w is not None:
                loss = loss * w.detach().to(loss.dtype)
        metrics = dict(out.metrics)
        for m in self.modifiers:
            metrics.update(m.last_metrics)
        return LossOutput(loss, metrics)

    def check_data(self, labels: Optional[Sequence[bool]] = None) -> List[str]:
        """The wrapped loss's data warnings (see :meth:`ConfiguredLoss.check_data`)."""
        return _unique(self.base.check_data(labels))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "loss": self.base.state_dict(),
            "modifiers": {m.key: m.state_dict() for m in self.modifiers},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        self.base.load_state_dict(state.get("loss", {}))
        for m in self.modifiers:
            m_state = state.get("modifiers", {}).get(m.key)
            if m_state:
                m.load_state_dict(m_state)

    def describe(self) -> str:
        return f"{self.base.describe()} with " + ", ".join(m.describe() for m in self.modifiers)


def _make_modifier(key: str, value: Any) -> Optional[Modifier]:
    spec = get_modifier_spec(key)
    if value is None or value is False:
        return None
    if value is True:
        kwargs = {}
    elif isinstance(value, Mapping):
        kwargs = dict(value)
    elif isinstance(value, (int, float)) and spec.shorthand:
        kwargs = {spec.shorthand: float(value)}
    else:
        raise ValueError(
            f"modifier {key!r}: give a mapping of its hyperparameters {sorted(spec.defaults)}"
            + (f", or a number for {spec.shorthand!r}" if spec.shorthand else ", or true")
            + f"; got {value!r}"
        )
    unknown = sorted(set(kwargs) - set(spec.defaults))
    if unknown:
        raise ValueError(f"modifier {spec.name!r} has no hyperparameter(s) {unknown}; "
                         f"it accepts {sorted(spec.defaults)}")
    return spec.impl(**kwargs)


def apply_modifiers(
    loss: Union[str, LossLike], modifiers: Optional[Mapping[str, Any]] = None
) -> Union[LossLike, ModifiedLoss]:
    """Wrap ``loss`` (a built loss or a loss expression) with the modifiers in ``modifiers``.

    ``modifiers`` maps a modifier name (or alias) to its hyperparameters: a mapping, ``true`` for the
    defaults, ``false``/``null`` to leave it off, or a number for the one shorthand hyperparameter
    (``ld_alpha: 0.5``). Returns ``loss`` unchanged when no modifier is on.
    """
    if isinstance(loss, str):
        loss = get_loss(loss)
    built = [m for m in (_make_modifier(k, v) for k, v in (modifiers or {}).items()) if m is not None]
    if not built:
        return loss
    return ModifiedLoss(loss, built)


def build_loss(config: Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]]]):
    """Build a loss from a config value: the one builder behind the ``loss:`` section.

    * a mapping ``{"name": "dpo", "beta": 0.1, "modifiers": {"ld_alpha": 0.5}}``: ``name`` is a loss
      name, alias or sum expression (``"dpo + 0.2*sft"``);
    * a mapping ``{"components": [{"name": ..., "weight": ..., **hparams}, ...], ...}``;
    * a loss expression string, or a component list, as :func:`dpokit.losses.get_loss` takes them.

    In a mapping, give exactly one of ``name`` and ``components``; every other key but
    ``modifiers`` is a hyperparameter, passed as :func:`dpokit.losses.get_loss` passes them.
    """
    if isinstance(config, str):
        return get_loss(config)
    if not isinstance(config, Mapping):
        return get_loss(list(config))
    cfg = dict(config)
    modifiers = cfg.pop("modifiers", None)
    if "components" in cfg:
        if "name" in cfg:
            raise ValueError("give either 'name' or 'components', not both")
        target = cfg.pop("components")
    elif "name" in cfg:
        target = cfg.pop("name")
    else:
        raise ValueError("'name' is required (e.g. name: dpo)")
    if modifiers and not isinstance(modifiers, Mapping):
        raise ValueError(f"'modifiers' must be a mapping of modifier name to settings, got {modifiers!r}")
    return apply_modifiers(get_loss(target, **cfg), modifiers)
