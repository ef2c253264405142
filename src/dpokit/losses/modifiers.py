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

import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ._distributed import broadcast_from_first, gather_detached_with_offset
from ._numerics import capped_exp, masked_mean, masked_sum, require_extra
from .base import LossInputs, LossOutput
from .registry import CompositeLoss, ConfiguredLoss, Needs, _hyperparameter_defaults, get_loss

Tensor = torch.Tensor

# Losses whose per-example output is not per example (sorted over the batch).
_SORTED_LOSSES = {"aot", "aot_unpaired"}


# ------------------------------------------------------------------------------------------------
@dataclass
class ModifierSpec:
    name: str
    impl: type
    needs: Needs
    source: str
    defaults: Dict[str, Any]
    aliases: Tuple[str, ...] = ()
    summary: str = ""
    verified: str = "verified"
    shorthand: Optional[str] = None  # hyperparameter a bare scalar config value sets

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "family": "modifier",
            "aliases": list(self.aliases),
            "needs": self.needs.as_dict(),
            "hyperparameters": self.defaults,
            "source": self.source,
            "verified": self.verified,
            "summary": self.summary,
        }


_MODIFIERS: Dict[str, ModifierSpec] = {}
_MODIFIER_ALIASES: Dict[str, str] = {}


def register_modifier(
    name: str,
    *,
    source: str,
    needs: Needs,
    aliases: Sequence[str] = (),
    verified: str = "verified",
    shorthand: Optional[str] = None,
):
    def decorator(cls):
        doc = inspect.getdoc(cls) or ""
        if not doc:
            raise TypeError(f"modifier {name!r} must have a docstring with its formula and source")
        if name in _MODIFIERS or name in _MODIFIER_ALIASES:
            raise ValueError(f"modifier {name!r} is already registered")
        _MODIFIERS[name] = ModifierSpec(
            name=name, impl=cls, needs=needs, source=source, defaults=_hyperparameter_defaults(cls),
            aliases=tuple(aliases), summary=doc.splitlines()[0], verified=verified, shorthand=shorthand,
        )
        for alias in aliases:
            _MODIFIER_ALIASES[alias] = name
        cls.key = name
        return cls

    return decorator


def list_modifiers() -> List[ModifierSpec]:
    return [_MODIFIERS[n] for n in sorted(_MODIFIERS)]


def get_modifier_spec(name: str) -> ModifierSpec:
    key = _MODIFIER_ALIASES.get(name, name)
    if key not in _MODIFIERS:
        raise KeyError(f"unknown loss modifier {name!r}; known: {sorted(_MODIFIERS) + sorted(_MODIFIER_ALIASES)}")
    return _MODIFIERS[key]


class Modifier:
    """Base class: override ``transform`` (inputs -> inputs) and/or ``weights`` (inputs -> [B])."""

    key = "modifier"
    order = 50

    def __init__(self):
        self.last_metrics: Dict[str, Tensor] = {}

    def transform(self, inputs: LossInputs) -> LossInputs:
        return inputs

    def weights(self, inputs: LossInputs) -> Optional[Tensor]:
        return None

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def hparams(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in _MODIFIERS[self.key].defaults}

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

    def __init__(self, a: float = 0.6, rho: float = 0.2, ema: float = 0.9, min_beta: float = 1e-3):
        super().__init__()
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"beta_dpo: rho must be in [0, 1), got {rho}")
        self.a, self.rho, self.ema, self.min_beta = a, rho, ema, min_beta
        self.gap_mean = 0.0
        self.gap_std = 0.0

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


def _component_names(loss) -> List[str]:
    if isinstance(loss, CompositeLoss):
        return [c.name for _, c in loss.components]
    return [loss.name]


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
        names = set(_component_names(base))
        per_example = [m.key for m in self.modifiers if m.key in ("wpo", "madpo", "beta_dpo")]
        if per_example and names & _SORTED_LOSSES:
            raise ValueError(
                f"{sorted(names & _SORTED_LOSSES)} sort the batch, so per-example modifiers "
                f"{per_example} cannot apply to it"
            )
        self._beta = next((m for m in self.modifiers if isinstance(m, BetaDPO)), None)
        if self._beta is not None:
            ok = isinstance(base, ConfiguredLoss) and not base.spec.stateful and "beta" in base.hparams
            if not ok:
                raise ValueError("beta_dpo needs a single stateless loss with a 'beta' hyperparameter "
                                 f"(e.g. dpo); got {base.describe()}")
        needs = base.needs
        for m in self.modifiers:
            needs = needs.union(_MODIFIERS[m.key].needs)
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
        if self._beta is not None:
            out = self._beta.run(self.base, x, self.training)
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
    """Build a loss from a config value: a loss expression, a component list, or a mapping

    ``{"name": "dpo", "beta": 0.1, "modifiers": {"ld_alpha": 0.5}}`` (``name`` may be a sum expression
    such as ``"dpo + 0.2*sft"``; ``components: [...]`` may replace ``name``). Every other key is a
    hyperparameter, passed as :func:`dpokit.losses.get_loss` passes them.
    """
    if isinstance(config, str):
        return get_loss(config)
    if not isinstance(config, Mapping):
        return get_loss(list(config))
    cfg = dict(config)
    modifiers = cfg.pop("modifiers", None)
    if "components" in cfg:
        name = cfg.pop("components")
    elif "name" in cfg:
        name = cfg.pop("name")
    else:
        raise ValueError(f"loss config needs a 'name' or 'components': {config}")
    return apply_modifiers(get_loss(name, **cfg), modifiers)
