"""Registry of objectives: a name -> (function, hyperparameter defaults, what it needs, source).

A loss is registered once, next to its implementation::

    @register_loss("dpo", family="pairwise", source="Rafailov et al. 2023, arXiv 2305.18290",
                   needs=Needs(reference=True))
    def dpo_loss(inputs: LossInputs, beta: float = 0.1) -> LossOutput: ...

Stateful losses (running means, EMAs) register a class instead of a function: its ``__init__`` takes
the hyperparameters, ``__call__(inputs)`` returns a :class:`LossOutput`, and ``state_dict`` /
``load_state_dict`` let the trainer checkpoint the state so a resumed run continues exactly.
The ``training`` attribute is False during evaluation; state must not change then.

``get_loss`` builds a callable from a name, an alias, or a weighted sum written as a string
(``"dpo + 0.2*sft"``) or as a list of ``{"name": ..., "weight": ..., **hparams}`` dicts.
The trainer only ever calls the result and reads ``.needs``: it knows no method by name.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .base import LossInputs, LossOutput

DATA_KINDS = ("pairs", "unpaired", "lists")


@dataclass(frozen=True)
class Needs:
    """What the log-prob engine must compute for a loss.

    * ``reference``: reference-model log-probs (False for reference-free losses).
    * ``data``: ``pairs`` | ``unpaired`` | ``lists``.
    * ``token_logps``: per-token log-probs (not only sequence sums).
    * ``token_stats``: per-token statistics over the vocabulary, any of ``"ref_kl"``
      (KL(ref || policy) per position), ``"sum_p2"`` (sum_v p(v)^2, for WPO), ``"entropy"``.
    * ``batch_coupled``: the loss of one example depends on others in the batch (sorting, batch
      statistics); gradient accumulation is then not equivalent to a larger batch, and the
      loss gathers across processes when run distributed.
    * ``per_example``: entry ``i`` of the returned loss belongs to example ``i`` (True for almost
      every loss). False for losses that sort the batch (AOT): only their batch mean is
      meaningful, so modifiers that weight or select examples refuse them.
    * ``extras``: names of per-example data fields the loss reads from ``LossInputs.extras``.
    * ``mismatched_kl``: (unpaired data) log-probs of mismatched completions ``(x_i, y_{i-1})``
      under policy and reference, for KTO's KL estimate (``LossInputs.kl_*_logps``).
    * ``prompt_logps``: (pairs) the policy's summed log-probs of the prompt tokens after the first
      (``LossInputs.policy_prompt_logps``, ``prompt_lengths``), for an NLL term over prompt and
      response (ORPO as its authors and TRL compute it).
    """

    reference: bool = True
    data: str = "pairs"
    token_logps: bool = False
    token_stats: Tuple[str, ...] = ()
    batch_coupled: bool = False
    per_example: bool = True
    extras: Tuple[str, ...] = ()
    mismatched_kl: bool = False
    prompt_logps: bool = False

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"Needs.data must be one of {DATA_KINDS}, got {self.data!r}")
        if self.prompt_logps and self.data != "pairs":
            raise ValueError(f"Needs.prompt_logps is computed for pairs only, not for {self.data}")

    def union(self, other: "Needs") -> "Needs":
        if self.data != other.data:
            raise ValueError(f"cannot combine a loss on {self.data} with a loss on {other.data}")
        return Needs(
            reference=self.reference or other.reference,
            data=self.data,
            token_logps=self.token_logps or other.token_logps,
            token_stats=tuple(sorted(set(self.token_stats) | set(other.token_stats))),
            batch_coupled=self.batch_coupled or other.batch_coupled,
            per_example=self.per_example and other.per_example,
            extras=tuple(sorted(set(self.extras) | set(other.extras))),
            mismatched_kl=self.mismatched_kl or other.mismatched_kl,
            prompt_logps=self.prompt_logps or other.prompt_logps,
        )

    def as_dict(self) -> Dict[str, Any]:
        return {
            "reference": self.reference,
            "data": self.data,
            "token_logps": self.token_logps,
            "token_stats": list(self.token_stats),
            "batch_coupled": self.batch_coupled,
            "per_example": self.per_example,
            "extras": list(self.extras),
            "mismatched_kl": self.mismatched_kl,
            "prompt_logps": self.prompt_logps,
        }


NeedsLike = Union[Needs, Callable[..., Needs]]
DataCheck = Callable[..., List[str]]


@dataclass
class LossSpec:
    """A registered loss or modifier: its implementation and everything declared about it.

    ``needs`` is what the implementation needs with its default hyperparameters; a loss whose needs
    depend on a hyperparameter registers a function of the hyperparameters (``needs_fn``), and
    :meth:`needs_for` gives the needs of a configured instance. ``data_check(labels, **hparams)``
    (optional) returns warnings about the training data, see :meth:`ConfiguredLoss.check_data`.
    ``shorthand`` (modifiers) names the hyperparameter that a bare number in the config sets.
    """

    name: str
    impl: Callable
    needs: Needs
    source: str
    family: str
    defaults: Dict[str, Any]
    aliases: Tuple[str, ...] = ()
    summary: str = ""
    verified: str = "verified"
    needs_fn: Optional[Callable[..., Needs]] = None
    data_check: Optional[DataCheck] = None
    shorthand: Optional[str] = None

    @property
    def stateful(self) -> bool:
        return inspect.isclass(self.impl)

    def needs_for(self, hparams: Dict[str, Any]) -> Needs:
        if self.needs_fn is None:
            return self.needs
        return self.needs_fn(**{**self.defaults, **hparams})

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "aliases": list(self.aliases),
            "needs": self.needs.as_dict(),
            "hyperparameters": self.defaults,
            "source": self.source,
            "verified": self.verified,
            "summary": self.summary,
        }


ModifierSpec = LossSpec  # modifiers are registered with the same spec class


class Registry:
    """Names and aliases -> :class:`LossSpec`, with a did-you-mean error for unknown names."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint
        self.specs: Dict[str, LossSpec] = {}
        self.aliases: Dict[str, str] = {}

    def add(self, spec: LossSpec) -> None:
        if not inspect.getdoc(spec.impl):
            raise TypeError(f"{self.kind} {spec.name!r} must have a docstring with its formula and source")
        if spec.name in self.specs or spec.name in self.aliases:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered")
        for alias in spec.aliases:
            if alias in self.specs or alias in self.aliases:
                raise ValueError(f"alias {alias!r} is already registered")
        self.specs[spec.name] = spec
        for alias in spec.aliases:
            self.aliases[alias] = spec.name

    def resolve(self, name: str) -> str:
        name = name.strip()
        if name in self.specs:
            return name
        if name in self.aliases:
            return self.aliases[name]
        choices = sorted(self.specs) + sorted(self.aliases)
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {choices}"
        raise KeyError(f"unknown {self.kind} {name!r}{hint}{self.hint}")

    def get(self, name: str) -> LossSpec:
        return self.specs[self.resolve(name)]

    def all(self) -> List[LossSpec]:
        return [self.specs[n] for n in sorted(self.specs)]


LOSSES = Registry("loss", " (run `dpokit losses` for the list)")
_REGISTRY: Dict[str, LossSpec] = LOSSES.specs
_ALIASES: Dict[str, str] = LOSSES.aliases


def _hyperparameter_defaults(impl: Callable) -> Dict[str, Any]:
    target = impl.__init__ if inspect.isclass(impl) else impl
    params = list(inspect.signature(target).parameters.values())
    params = params[1:]  # `inputs` for functions, `self` for classes
    defaults = {}
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is p.empty:
            raise TypeError(f"{impl.__name__}: hyperparameter {p.name!r} needs a default")
        defaults[p.name] = p.default
    return defaults


def make_spec(name: str, impl: Callable, *, family: str, source: str, needs: NeedsLike,
              aliases: Sequence[str] = (), verified: str = "verified", **extra) -> LossSpec:
    """Build the spec of ``impl``: hyperparameters from its signature, summary from its docstring."""
    defaults = _hyperparameter_defaults(impl)
    needs_fn = None if isinstance(needs, Needs) else needs
    doc = inspect.getdoc(impl) or ""
    return LossSpec(
        name=name,
        impl=impl,
        needs=needs if needs_fn is None else needs_fn(**defaults),
        source=source,
        family=family,
        defaults=defaults,
        aliases=tuple(aliases),
        summary=doc.splitlines()[0] if doc else "",
        verified=verified,
        needs_fn=needs_fn,
        **extra,
    )


def register_loss(
    name: str,
    *,
    family: str,
    source: str,
    needs: NeedsLike = Needs(),
    aliases: Sequence[str] = (),
    verified: str = "verified",
    data_check: Optional[DataCheck] = None,
):
    """Decorator registering a loss function or stateful loss class under ``name``.

    ``family`` is the name of the module that holds the loss (one docs page per family).
    ``needs`` is a :class:`Needs`, or a function of the hyperparameters returning one.
    ``data_check(labels, **hparams) -> [warning, ...]`` checks the training data (optional).
    """

    def decorator(impl):
        LOSSES.add(make_spec(name, impl, family=family, source=source, needs=needs, aliases=aliases,
                             verified=verified, data_check=data_check))
        return impl

    return decorator


def resolve_name(name: str) -> str:
    return LOSSES.resolve(name)


def get_spec(name: str) -> LossSpec:
    return LOSSES.get(name)


def list_losses() -> List[LossSpec]:
    return LOSSES.all()


class ConfiguredLoss:
    """One registered loss with its hyperparameters bound. Call it on :class:`LossInputs`."""

    def __init__(self, spec: LossSpec, hparams: Dict[str, Any]):
        unknown = sorted(set(hparams) - set(spec.defaults))
        if unknown:
            raise ValueError(
                f"loss {spec.name!r} has no hyperparameter(s) {unknown}; "
                f"it accepts {sorted(spec.defaults) or 'none'}"
            )
        self.spec = spec
        self.hparams = {**spec.defaults, **hparams}
        self._needs = spec.needs_for(self.hparams)
        self._instance = spec.impl(**self.hparams) if spec.stateful else None
        self.training = True

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs(self) -> Needs:
        return self._needs

    def check_data(self, labels: Optional[Sequence[bool]] = None) -> List[str]:
        """Warnings about the training data for this loss (empty when it has none to give).

        ``labels``: one bool per training example for unpaired data (True = desirable), else None.
        """
        if self.spec.data_check is None:
            return []
        return list(self.spec.data_check(labels, **self.hparams))

    def __call__(self, inputs: LossInputs) -> LossOutput:
        if self._instance is not None:
            self._instance.training = self.training
            return self._instance(inputs)
        return self.spec.impl(inputs, **self.hparams)

    def state_dict(self) -> Dict[str, Any]:
        if self._instance is not None and hasattr(self._instance, "state_dict"):
            return self._instance.state_dict()
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state and self._instance is not None:
            self._instance.load_state_dict(state)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{self.name}({args})"


class CompositeLoss:
    """Weighted sum of losses: ``sum_i w_i * L_i``; metrics are prefixed by the component name.

    The ``rewards/*`` and ``logps/*`` metrics of the first component are also reported
    unprefixed, so a composite run logs the same headline metrics as a single loss.
    """

    def __init__(self, components: List[Tuple[float, ConfiguredLoss]]):
        if not components:
            raise ValueError("a composite loss needs at least one component")
        self.components = components
        needs = components[0][1].needs
        for _, loss in components[1:]:
            needs = needs.union(loss.needs)
        self._needs = needs
        self.training = True

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g}*{loss.name}" for w, loss in self.components)

    @property
    def needs(self) -> Needs:
        return self._needs

    def check_data(self, labels: Optional[Sequence[bool]] = None) -> List[str]:
        """The warnings of every component (see :meth:`ConfiguredLoss.check_data`), without repeats."""
        return _unique(w for _, loss in self.components for w in loss.check_data(labels))

    def __call__(self, inputs: LossInputs) -> LossOutput:
        total = None
        metrics: Dict[str, torch.Tensor] = {}
        for i, (weight, loss) in enumerate(self.components):
            loss.training = self.training
            out = loss(inputs)
            total = weight * out.loss if total is None else total + weight * out.loss
            metrics[f"{loss.name}/loss"] = out.loss.detach().mean()
            for key, value in out.metrics.items():
                metrics[f"{loss.name}/{key}"] = value
                if i == 0:
                    metrics[key] = value
        return LossOutput(total, metrics)

    def state_dict(self) -> Dict[str, Any]:
        return {str(i): loss.state_dict() for i, (_, loss) in enumerate(self.components)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for i, (_, loss) in enumerate(self.components):
            loss.load_state_dict(state.get(str(i), {}))

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{loss.describe()}" for w, loss in self.components)


def _unique(items: Iterable[str]) -> List[str]:
    return list(dict.fromkeys(items))


_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_][\w\-]*)\s*$")


def parse_loss_expression(expression: str) -> List[Tuple[float, str]]:
    """``"dpo + 0.2*sft"`` -> ``[(1.0, "dpo"), (0.2, "sft")]`` (no ``eval``: a strict grammar)."""
    terms = []
    for raw in expression.split("+"):
        match = _TERM.match(raw)
        if not match:
            raise ValueError(
                f"cannot parse loss term {raw.strip()!r} in {expression!r}; "
                "write a name or a weighted sum such as 'dpo + 0.2*sft'"
            )
        weight = float(match.group("weight")) if match.group("weight") else 1.0
        terms.append((weight, match.group("name")))
    return terms


LossLike = Union[ConfiguredLoss, CompositeLoss]


def get_loss(name: Union[str, Iterable[Dict[str, Any]]], **hparams) -> LossLike:
    """Build a loss from a name, alias, sum expression, or a list of component dicts.

    Hyperparameters passed here go to every component that accepts them; a hyperparameter that no
    component accepts is an error. Component dicts may carry their own hyperparameters.
    """
    if isinstance(name, str):
        terms = parse_loss_expression(name)
        if len(terms) == 1 and terms[0][0] == 1.0:
            return ConfiguredLoss(get_spec(terms[0][1]), hparams)
        components = [{"name": n, "weight": w} for w, n in terms]
    else:
        components = [dict(c) for c in name]
    specs = []
    for comp in components:
        if "name" not in comp:
            raise ValueError(f"loss component {comp} has no 'name'")
        specs.append(get_spec(comp["name"]))
    unused = set(hparams)
    built = []
    for comp, spec in zip(components, specs):
        own = {k: v for k, v in comp.items() if k not in ("name", "weight")}
        shared = {k: v for k, v in hparams.items() if k in spec.defaults and k not in own}
        unused -= set(shared)
        built.append((float(comp.get("weight", 1.0)), ConfiguredLoss(spec, {**shared, **own})))
    if unused:
        raise ValueError(
            f"hyperparameter(s) {sorted(unused)} are accepted by none of "
            f"{[s.name for s in specs]}"
        )
    return CompositeLoss(built)
