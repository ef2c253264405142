"""Hyperparameter checks run at config validation, before any model is loaded.

Two layers, both without tensors or models:

* generic rules by hyperparameter name and default type (:func:`generic_problems`): every number
  finite; a value of the default's type (a number where the default is a number, ...);
  ``beta``/``beta_w``/``beta_l`` > 0; ``label_smoothing`` in [0, 0.5); ``*_weight`` >= 0;
  composite weights finite.
* each loss's own checks (``rdpo``: ``0 <= eps < 0.5``, ``ipo``: ``beta > 0``, ...), which the
  loss functions make before they read their inputs. :func:`probe` calls every component once
  with a stand-in for :class:`~dpokit.losses.LossInputs` that stops the call (with an exception
  no ``except Exception`` catches) as soon as the loss touches it. An error raised before that
  point comes from the hyperparameters alone, so no valid configuration is refused; a check
  placed after the first read of the inputs is not reached here; the next layer covers it.
* a run on tiny synthetic inputs that match the loss's ``Needs`` (:func:`synthetic_run`), for
  losses that read no data-supplied extras: an error counts as a hyperparameter error only when
  the same loss with its default hyperparameters runs cleanly on the same inputs. Losses that
  read extras (``modpo`` scores, token weights, ...) skip this layer, because their checks may
  relate hyperparameters to the data's shape, which is unknown before the data is read.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, List, Tuple

POSITIVE = ("beta", "beta_w", "beta_l")
KL_BETA_FAMILIES = ("policy_gradient",)  # there ``beta`` weighs a KL penalty: 0 (no penalty) is valid


class _InputsReached(BaseException):
    """The probed loss started reading its inputs: its up-front hyperparameter checks passed."""


class _UntouchableInputs:
    def __getattribute__(self, name: str):
        raise _InputsReached(name)

    def __getattr__(self, name: str):  # pragma: no cover - __getattribute__ always raises first
        raise _InputsReached(name)


def _components(loss) -> Iterator[Tuple[float, Any]]:
    """(weight, ConfiguredLoss-like) for every leaf of a composite or modified loss."""
    if hasattr(loss, "components"):
        for weight, component in loss.components:
            for inner_weight, leaf in _components(component):
                yield weight * inner_weight, leaf
    elif hasattr(loss, "base") and hasattr(loss, "modifiers"):
        yield from _components(loss.base)
    else:
        yield 1.0, loss


def _numbers(value) -> List[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


def _type_problem(name: str, value: Any, default: Any) -> str:
    if default is None or value is None:
        return ""
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-3 without a dot as text; write 1.0e-3)" if isinstance(value, str) else ""
            return f"expected a number, got {value!r}{hint}"
        return ""
    if isinstance(default, str):
        return "" if isinstance(value, str) else f"expected a string, got {value!r}"
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return f"expected a list of numbers, got {value!r}"
    return ""


def generic_problems(loss) -> List[str]:
    """Problems the generic rules find in ``loss`` (a built loss), as ``"name.hparam: why"``."""
    problems = []
    for weight, leaf in _components(loss):
        if not math.isfinite(weight):
            problems.append(f"{getattr(leaf, 'name', 'loss')}: component weight {weight} is not finite")
        hparams = getattr(leaf, "hparams", {}) or {}
        spec = getattr(leaf, "spec", None)
        defaults = getattr(spec, "defaults", {}) or {}
        name = getattr(leaf, "name", "loss")
        for key, value in hparams.items():
            where = f"{name}.{key}"
            problem = _type_problem(key, value, defaults.get(key))
            if problem:
                problems.append(f"{where}: {problem}")
                continue
            numbers = _numbers(value)
            if any(not math.isfinite(float(x)) for x in numbers):
                problems.append(f"{where}: must be finite, got {value!r}")
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key in POSITIVE and getattr(spec, "family", None) in KL_BETA_FAMILIES:
                if value < 0:
                    problems.append(f"{where}: must be >= 0 (the KL weight; 0 for none), got {value}")
            elif key in POSITIVE and value <= 0:
                problems.append(f"{where}: must be > 0, got {value}")
            elif key == "label_smoothing" and not 0.0 <= value < 0.5:
                problems.append(f"{where}: must be in [0, 0.5), got {value}")
            elif key.endswith("_weight") and value < 0:
                problems.append(f"{where}: must be >= 0, got {value}")
    return problems


def probe(loss) -> None:
    """Run every component's up-front checks; raises the loss's own ``ValueError``/``TypeError``."""
    for _, leaf in _components(loss):
        previous = getattr(leaf, "training", True)
        try:
            leaf.training = False
        except AttributeError:
            pass
        try:
            leaf(_UntouchableInputs())
        except _InputsReached:
            pass
        finally:
            try:
                leaf.training = previous
            except AttributeError:
                pass


def synthetic_inputs(needs, batch: int = 4, length: int = 3, seed: int = 0):
    """A small :class:`~dpokit.losses.LossInputs` holding what ``needs`` asks for (no extras)."""
    import torch

    from . import LossInputs

    gen = torch.Generator().manual_seed(seed)
    logps = lambda *shape: -(0.1 + 2.0 * torch.rand(*shape, generator=gen))  # noqa: E731
    lengths = torch.full((batch,), float(length))
    values = {}
    if needs.data == "pairs":
        mask = torch.ones(batch, length, dtype=torch.bool)
        for which in ("chosen", "rejected"):
            values[f"{which}_lengths"] = lengths
            for model in ("policy",) + (("reference",) if needs.reference else ()):
                tokens = logps(batch, length)
                values[f"{model}_{which}_logps"] = tokens.sum(-1)
                if needs.token_logps or needs.token_stats:
                    values[f"{model}_{which}_token_logps"] = tokens
            if needs.token_logps or needs.token_stats:
                values[f"{which}_token_mask"] = mask
        if needs.prompt_logps:
            values["policy_prompt_logps"] = logps(batch, length).sum(-1)
            values["prompt_lengths"] = lengths
        values["token_stats"] = {f"{which}/{stat}": 0.5 * torch.rand(batch, length, generator=gen)
                                 for which in ("chosen", "rejected") for stat in needs.token_stats}
    elif needs.data == "unpaired":
        values.update(policy_logps=logps(batch), lengths=lengths,
                      labels=torch.tensor([i % 2 == 0 for i in range(batch)]))
        if needs.reference:
            values["reference_logps"] = logps(batch)
        if needs.mismatched_kl:
            values["kl_policy_logps"] = logps(batch)
            if needs.reference:
                values["kl_reference_logps"] = logps(batch)
    else:
        raise ValueError(f"no synthetic inputs for {needs.data} data")
    return LossInputs(**values)


def synthetic_run(loss) -> None:
    """Run every eligible component on synthetic inputs; raise its error when the same loss with
    default hyperparameters runs cleanly on them (see the module docstring)."""
    from .registry import ConfiguredLoss

    for _, leaf in _components(loss):
        spec = getattr(leaf, "spec", None)
        if not isinstance(leaf, ConfiguredLoss) or spec is None:
            continue
        needs = leaf.needs
        if needs.extras or needs.data not in ("pairs", "unpaired"):
            continue
        if leaf.hparams == spec.defaults:
            continue
        try:
            inputs = synthetic_inputs(needs)
            default = ConfiguredLoss(spec, {})
            default.training = False
            default(inputs)
        except Exception:  # the synthetic inputs do not suit this loss: nothing to learn here
            continue
        fresh = ConfiguredLoss(spec, {k: v for k, v in leaf.hparams.items() if k in spec.defaults})
        fresh.training = False
        try:
            fresh(inputs)
        except (ValueError, TypeError) as err:
            raise ValueError(str(err)) from None
        except Exception:  # not a hyperparameter error we can name with confidence
            continue


def check_loss(loss) -> None:
    """Raise ``ValueError`` naming the first hyperparameter problem of a built loss."""
    problems = generic_problems(loss)
    if problems:
        raise ValueError("; ".join(problems))
    try:
        probe(loss)
    except (ValueError, TypeError, ArithmeticError) as err:
        raise ValueError(str(err)) from None
    synthetic_run(loss)
