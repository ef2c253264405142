"""Judges: what decides which of a policy's responses is better in online training.

Two kinds, two small interfaces:

* a **pointwise** judge scores each response (higher is better)::

      judge.score(prompts, responses) -> list[float]        # one score per (prompt, response)

  - :class:`CallableJudge`: a Python function ``fn(prompt, response) -> float`` (a verifier, a rule,
    your own scorer; ``bool``/``int`` results count as floats), given as an object or loaded from
    ``"module:function"``, ``"path/file.py:function"`` (loaded without touching ``sys.path``) or a
    built-in name (:data:`BUILTIN_JUDGES`: ``parity``, the reward of ``dpokit demo``'s task);
  - :class:`RewardModelJudge`: a Hugging Face sequence-classification reward model
    (``AutoModelForSequenceClassification``, one output), safetensors weights only,
    ``trust_remote_code`` off unless asked. ``dpokit train-rm`` trains one.

* a **pairwise** judge gives the probability that the first of two responses is preferred::

      judge.prefer(prompts, first, second) -> list[float]   # P(first > second), in [0, 1]

  - :class:`BradleyTerryJudge`: from a pointwise judge, ``P = sig(scale * (s_a - s_b))``
    (``mode="hard"``: 1, 0.5 or 0 by comparing the scores);
  - :class:`CallablePairwiseJudge`: ``fn(prompt, a, b)`` returning a probability, a bool, or 0/1;
  - :class:`dpokit.preference.gpm.GPMJudge` (kind ``gpm``): a general preference model, which also
    judges a whole group of K responses with K passes (its ``judge_group``).

:func:`judge_group` turns either kind into what online strategies read for one prompt and its K
responses: per-response scores and the K x K matrix ``W[i][j] = P(y_i > y_j)`` (diagonal 0.5). With
a pairwise judge the score of a response is its mean win rate against the group (the estimate SPPO
trains on); with a pointwise judge the matrix is derived from the scores.

:func:`build_judge` is the one way to get a judge: it takes a judge object, a Python callable, a
``"module:function"`` / ``"file.py:function"`` / built-in name, or a config mapping ``{kind: ...}``
(``online.judge``, ``train.monitor.judge``, ``dpokit eval --judge``); the kinds are a registry
(:data:`JUDGES`), not a chain of branches. :func:`score_responses` checks what a pointwise judge returns.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

from .rm_io import load_reward_model, reward_model_scores, reward_model_text  # noqa: F401  (re-exported)


@runtime_checkable
class PointwiseJudge(Protocol):
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> List[float]: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    def prefer(self, prompts: Sequence[Any], first: Sequence[str], second: Sequence[str]) -> List[float]: ...


def _finite(value: Any, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} returned a non-finite score ({value})")
    return value


# ------------------------------------------------------------------------------------------------
# Python functions named in a config
# ------------------------------------------------------------------------------------------------
BUILTIN_JUDGES: Dict[str, str] = {"parity": "dpokit.tasks.parity:parity_reward"}


def load_function(spec: str) -> Callable:
    """The function a judge spec names: a built-in name, ``package.module:function`` (an importable
    module) or ``path/to/file.py:function`` (a Python file, loaded without putting it on ``sys.path``)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"judge: expected a name or 'module:function', got {spec!r}")
    spec = BUILTIN_JUDGES.get(spec, spec)
    if ":" not in spec:
        raise ValueError(f"judge {spec!r}: not a built-in judge ({', '.join(sorted(BUILTIN_JUDGES))}) and not "
                         "'module:function' or 'file.py:function'")
    target, _, attribute = spec.rpartition(":")
    if target.endswith(".py"):
        if not os.path.exists(target):
            raise FileNotFoundError(f"judge file not found: {target}")
        name = "dpokit_judge_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"judge {spec!r}: {attribute!r} is not a callable in {target}")
    return function


def score_responses(judge: PointwiseJudge, prompts: Sequence[Any], responses: Sequence[str]) -> List[float]:
    """``judge.score`` with its result checked: one float per response."""
    scores = list(judge.score(list(prompts), list(responses)))
    if len(scores) != len(responses):
        raise ValueError(f"judge {judge_label(judge)} returned {len(scores)} scores for {len(responses)} responses")
    return [float(s) for s in scores]


def judge_label(judge: Any) -> str:
    """How results name a judge: its ``name`` (the spec it was built from), else its type."""
    return getattr(judge, "name", type(judge).__name__)


# ------------------------------------------------------------------------------------------------
# Pointwise judges
# ------------------------------------------------------------------------------------------------
class CallableJudge:
    """A Python callable as a judge. ``batched=True``: ``fn(prompts, responses) -> list``."""

    def __init__(self, fn: Any, batched: bool = False):
        self.name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
        self.fn = fn if callable(fn) else load_function(fn)
        self.batched = batched

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> List[float]:
        if len(prompts) != len(responses):
            raise ValueError("score: prompts and responses must have the same length")
        if self.batched:
            values = list(self.fn(list(prompts), list(responses)))
            if len(values) != len(responses):
                raise ValueError(f"judge {self.name}: returned {len(values)} scores for {len(responses)} responses")
        else:
            values = [self.fn(p, r) for p, r in zip(prompts, responses)]
        return [_finite(v, f"judge {self.name}") for v in values]


class RewardModelJudge:
    """A sequence-classification reward model: score = its first output on prompt + response."""

    name = "RewardModelJudge"

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 1024):
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # the model pools the last non-pad token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str = "auto",
                        batch_size: int = 16, max_length: int = 1024) -> "RewardModelJudge":
        model, tokenizer = load_reward_model(path, trust_remote_code=trust_remote_code, dtype=dtype)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device), tokenizer, batch_size, max_length)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> List[float]:
        return reward_model_scores(self.model, self.tokenizer, prompts, responses, self.batch_size,
                                   self.max_length).tolist()


# ------------------------------------------------------------------------------------------------
# Pairwise judges
# ------------------------------------------------------------------------------------------------
def pair_probability(a: float, b: float, mode: str = "bradley_terry", scale: float = 1.0) -> float:
    """P(a preferred over b) from two scores: ``sig(scale (a - b))`` or hard 1 / 0.5 / 0."""
    if mode == "hard":
        return 1.0 if a > b else (0.5 if a == b else 0.0)
    if mode != "bradley_terry":
        raise ValueError(f"unknown pairwise mode {mode!r} (bradley_terry or hard)")
    return 1.0 / (1.0 + math.exp(-max(min(scale * (a - b), 60.0), -60.0)))


class BradleyTerryJudge:
    """Pairwise judge from a pointwise one (``P = sig(scale * (s_a - s_b))``, or ``mode="hard"``)."""

    def __init__(self, judge: PointwiseJudge, mode: str = "bradley_terry", scale: float = 1.0):
        pair_probability(0.0, 0.0, mode, scale)  # validates mode
        self.judge, self.mode, self.scale = judge, mode, scale

    def prefer(self, prompts, first, second) -> List[float]:
        a = self.judge.score(prompts, first)
        b = self.judge.score(prompts, second)
        return [pair_probability(x, y, self.mode, self.scale) for x, y in zip(a, b)]


class CallablePairwiseJudge:
    """``fn(prompt, a, b)`` -> probability that ``a`` is preferred (a bool or 0/1 works too)."""

    def __init__(self, fn: Any):
        self.name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
        self.fn = fn if callable(fn) else load_function(fn)

    def prefer(self, prompts, first, second) -> List[float]:
        out = []
        for p, a, b in zip(prompts, first, second):
            value = _finite(self.fn(p, a, b), f"pairwise judge {self.name}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"pairwise judge {self.name} returned {value}; expected a probability in [0, 1]")
            out.append(value)
        return out


# ------------------------------------------------------------------------------------------------
# Judging a group of responses
# ------------------------------------------------------------------------------------------------
def judge_group(judge, prompt: Any, responses: Sequence[str], mode: str = "bradley_terry",
                scale: float = 1.0) -> Tuple[List[float], List[List[float]]]:
    """``(scores, W)`` for one prompt's responses; ``W[i][j] = P(y_i > y_j)``, ``W[i][i] = 0.5``.

    Pointwise judge: scores as given, ``W`` from them (``mode``/``scale`` as :func:`pair_probability`).
    Pairwise judge: each unordered pair is judged once (``W[j][i] = 1 - W[i][j]``) and the score of
    ``y_i`` is its mean win rate ``mean_j W[i][j]`` over the group (itself included, at 0.5).
    """
    k = len(responses)
    if callable(getattr(judge, "judge_group", None)):  # a judge that compares a whole group at once (GPM)
        return judge.judge_group(prompt, responses)
    if isinstance(judge, PointwiseJudge):
        scores = judge.score([prompt] * k, list(responses))
        win = [[pair_probability(scores[i], scores[j], mode, scale) if i != j else 0.5 for j in range(k)]
               for i in range(k)]
        return scores, win
    if not isinstance(judge, PairwiseJudge):
        raise TypeError(f"{type(judge).__name__} is neither a pointwise judge (score) nor a pairwise judge (prefer)")
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    probs = judge.prefer([prompt] * len(pairs), [responses[i] for i, _ in pairs], [responses[j] for _, j in pairs])
    win = [[0.5] * k for _ in range(k)]
    for (i, j), p in zip(pairs, probs):
        win[i][j], win[j][i] = p, 1.0 - p
    return [sum(row) / k for row in win], win


def win_rates(win: Sequence[Sequence[float]], against: Optional[Sequence[int]] = None) -> List[float]:
    """Mean win probability of each response against the responses ``against`` (default: all)."""
    cols = list(range(len(win))) if against is None else list(against)
    return [sum(row[j] for j in cols) / len(cols) for row in win]


# ------------------------------------------------------------------------------------------------
# Building judges from config
# ------------------------------------------------------------------------------------------------
JUDGES: Dict[str, Callable[..., Any]] = {}


def register_judge(kind: str):
    def decorator(factory):
        JUDGES[kind] = factory
        return factory

    return decorator


@register_judge("callable")
def _callable(function: str, batched: bool = False):
    """A Python function ``(prompt, response) -> score``: ``module:function``, ``file.py:function`` or a built-in."""
    return CallableJudge(function, batched=batched)


@register_judge("reward_model")
def _reward_model(path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str = "auto",
                  batch_size: int = 16, max_length: int = 1024):
    """A sequence-classification reward model (local directory or hub id; safetensors)."""
    return RewardModelJudge.from_pretrained(path, trust_remote_code, dtype, device, batch_size, max_length)


@register_judge("gpm")
def _gpm(path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str = "auto",
         batch_size: int = 16, max_length: int = 1024):
    """A general preference model saved by ``dpokit train-rm --kind gpm`` (K responses: K passes)."""
    from .gpm import GPMJudge

    return GPMJudge.from_pretrained(path, trust_remote_code, dtype, device, batch_size, max_length)


@register_judge("pairwise_callable")
def _pairwise_callable(function: str):
    """A Python function ``(prompt, a, b) -> P(a preferred)``."""
    return CallablePairwiseJudge(function)


@register_judge("bradley_terry")
def _bradley_terry(judge: Dict[str, Any], mode: str = "bradley_terry", scale: float = 1.0):
    """Pairwise judge from a pointwise one given as a nested mapping (``judge: {kind: ...}``)."""
    return BradleyTerryJudge(build_judge(judge), mode, scale)


def build_judge(spec: Any):
    """A judge from ``{"kind": ..., **arguments}`` (``online.judge``), or a judge object as is.

    A string is shorthand for ``{"kind": "callable", "function": spec}``.
    """
    if isinstance(spec, (PointwiseJudge, PairwiseJudge)):
        return spec
    if isinstance(spec, str) or callable(spec):
        return CallableJudge(spec)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"judge: expected a mapping with 'kind' ({', '.join(sorted(JUDGES))}), got {spec!r}")
    arguments = {k: v for k, v in spec.items() if k != "kind"}
    factory = JUDGES.get(spec["kind"])
    if factory is None:
        raise ValueError(f"judge kind {spec['kind']!r} is not one of {', '.join(sorted(JUDGES))}")
    try:
        return factory(**arguments)
    except TypeError as err:
        raise ValueError(f"judge kind {spec['kind']!r}: {err}") from None
