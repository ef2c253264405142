"""Multi-objective reward models, directional preference alignment (DPA) and robust preference
selection (RPS).

**Multi-objective reward model.** One output per objective, ``r(x, y) in R^m``, regressed on per-response
ratings (DPA's reward model: "regression" from per-attribute ratings)::

    L = mean_o (r_o(x, y) - t_o)^2          t_o = the row's ``scores_<o>`` column

Data: one response per row, ``prompt`` + ``response`` (or ``completion``) + one numeric ``scores_<name>``
column per objective, the same columns in every row (a row lacking one is a :class:`DataError` naming
its file and line).

**DPA** (Wang et al., ACL 2024, arXiv 2402.18571; RLHFlow/Directional-Preference-Alignment README):
a user preference is a unit direction ``v`` in reward space, the scalarized reward is ``R_v = v . r``;
the policy is conditioned on ``v`` through its prompt (:func:`direction_prompt`, the README's
"weighted rating = helpfulness*71 + verbosity*71" system prompt), and at generation time the
direction is arithmetic on that prompt and on ``v . r``: :func:`best_of_n` keeps the candidate with the
largest ``v . r`` (one round of DPA's rejection-sampling fine-tuning: :func:`rsf_rows`; the rounds
themselves are the online strategy ``dpa_rsf``, :mod:`dpokit.online.dpa`).

**RPS** (Mao et al., arXiv 2510.20498), training-free: for a target direction ``v*`` at angle
``theta*``, sample from directions in ``[theta* - delta, theta* + delta]`` (:func:`neighbour_directions`),
pool the candidates and return the argmax of ``v* . r`` (:func:`rps_select`). The neighbourhood size
and radius are not given in the sources read; ``k`` and ``delta`` are the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import DataError
from .judges import reward_model_text

SCORE_PREFIX = "scores_"


@dataclass
class ScoredResponse:
    prompt: Any
    response: Any
    scores: Dict[str, float] = field(default_factory=dict)
    location: str = ""


def load_scored(source: Any, limit: Optional[int] = None) -> List[ScoredResponse]:
    """Rows with ``prompt``, ``response`` (or ``completion``) and ``scores_<name>`` numbers."""
    from ..data.formats import iter_records

    rows: List[ScoredResponse] = []
    names: Optional[List[str]] = None
    first = ""
    for location, record in iter_records(source):
        if limit is not None and len(rows) >= limit:
            break
        response = record.get("response", record.get("completion"))
        if response is None:
            raise DataError(location, "response", "is missing", "multi-objective rows need 'prompt', 'response' "
                            "(or 'completion') and scores_<name> columns")
        if "prompt" not in record:
            raise DataError(location, "prompt", "is missing")
        columns = sorted(k for k in record if k.startswith(SCORE_PREFIX))
        if names is None:
            if not columns:
                raise DataError(location, None, "has no scores_<name> column",
                                "one numeric scores_<objective> column per objective")
            names, first = columns, location
        missing = [c for c in names if c not in record]
        if missing:
            raise DataError(location, missing[0], "is missing", f"every row needs the scores_ columns of {first}: "
                            f"{', '.join(names)}")
        extra = [c for c in columns if c not in names]
        if extra:
            raise DataError(location, extra[0], f"is not in {first} ({', '.join(names)})",
                            "every row needs the same scores_ columns")
        scores = {}
        for c in names:
            value = record[c]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(location, c, f"must be a finite number, got {value!r}")
            scores[c[len(SCORE_PREFIX):]] = float(value)
        rows.append(ScoredResponse(record["prompt"], response, scores, location))
    if not rows:
        raise DataError(str(source), None, "has no rows")
    return rows


def objectives_of(model) -> List[str]:
    settings = getattr(model.config, "dpokit_reward_model", None) or {}
    if settings.get("kind") != "multi":
        raise ValueError("not a multi-objective reward model (config.dpokit_reward_model.kind is not 'multi')")
    return list(settings["objectives"])


def reward_vectors(model, tokenizer, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 16,
                   max_length: int = 1024, grad: bool = False) -> torch.Tensor:
    """``r(x, y)`` [N, m]: every output of the sequence-classification model on prompt + response."""
    texts = [reward_model_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    from .gpm import _last_token_outputs

    return _last_token_outputs(model, tokenizer, texts, batch_size, max_length, grad)


def regression_loss(rewards: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row ``mean_o (r_o - t_o)^2`` [N]."""
    return ((rewards - target) ** 2).mean(-1)


def unit_direction(direction: Sequence[float], size: int) -> torch.Tensor:
    """``v / |v|`` as float64 [size]; a wrong length or a zero vector is a ValueError."""
    v = torch.as_tensor([float(x) for x in direction], dtype=torch.float64)
    if v.numel() != size:
        raise ValueError(f"direction has {v.numel()} components; the reward model has {size} objectives")
    norm = float(v.norm())
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"direction {list(direction)} has no length")
    return v / norm


def scalarize(rewards: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``R_v = v . r`` [N]."""
    return rewards.double() @ direction.to(rewards.device).double()


def angle_direction(theta_degrees: float) -> List[float]:
    """``(cos theta, sin theta)``: DPA's two-objective directions."""
    t = math.radians(theta_degrees)
    return [math.cos(t), math.sin(t)]


DIRECTION_TEMPLATE = "Your response should maximize weighted rating = {terms}."


def direction_text(direction: Sequence[float], objectives: Sequence[str], template: str = DIRECTION_TEMPLATE) -> str:
    """DPA's system-prompt sentence for ``v``, weights ``round(100 v_o)`` of the unit direction:
    ``"Your response should maximize weighted rating = helpfulness*71 + verbosity*71."``."""
    v = unit_direction(direction, len(objectives))
    terms = " + ".join(f"{name}*{round(100 * float(w))}" for name, w in zip(objectives, v))
    return template.format(terms=terms)


def direction_prompt(prompt: Any, direction: Sequence[float], objectives: Sequence[str],
                     template: str = DIRECTION_TEMPLATE) -> Any:
    """The prompt conditioned on ``v``: a text prompt gets :func:`direction_text` and a blank line in front
    (``"... weighted rating = helpfulness*71 + verbosity*71.\\n\\n<prompt>"``); a message list gets it as
    its system message (DPA's form; an existing system message keeps its text after it)."""
    text = direction_text(direction, objectives, template)
    if isinstance(prompt, str):
        return text + "\n\n" + prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        if prompt and prompt[0]["role"] == "system":
            return [{**prompt[0], "content": text + "\n\n" + str(prompt[0].get("content", ""))}] + list(prompt[1:])
        return [{"role": "system", "content": text}] + list(prompt)
    raise ValueError(f"a direction conditions a text prompt or a list of chat messages, got {type(prompt).__name__}")


Rewarder = Callable[[Sequence[Any], Sequence[Any]], torch.Tensor]  # (prompts, responses) -> r [N, m]


def best_of_n(prompt: Any, candidates: Sequence[Any], rewards: Rewarder, direction: Sequence[float]) -> Dict[str, Any]:
    """The candidate with the largest ``v . r(x, y)`` (ties: the first), with every candidate's value."""
    r = rewards([prompt] * len(candidates), list(candidates))
    values = scalarize(r, unit_direction(direction, r.shape[-1]))
    best = int(torch.argmax(values))
    return {"index": best, "response": candidates[best], "value": float(values[best]), "values": values.tolist()}


def rsf_rows(prompts: Sequence[str], directions: Sequence[Sequence[float]], sample: Callable[[str, int], List[Any]],
             rewards: Rewarder, objectives: Sequence[str], n: int = 8) -> List[Dict[str, Any]]:
    """One round of DPA's rejection-sampling fine-tuning: for each (prompt, direction), ``n`` samples of
    the direction-conditioned prompt, the best by ``v . r`` kept as an SFT row (``prompt``, ``completion``)."""
    rows = []
    for prompt, v in zip(prompts, directions):
        conditioned = direction_prompt(prompt, v, objectives)
        pick = best_of_n(prompt, sample(conditioned, n), rewards, v)
        rows.append({"prompt": conditioned, "completion": pick["response"], "direction": list(map(float, v)),
                     "value": pick["value"]})
    return rows


def neighbour_directions(theta_degrees: float, k: int, delta_degrees: float) -> List[List[float]]:
    """``k`` directions evenly spaced over ``[theta - delta, theta + delta]`` (``theta`` itself when k is odd)."""
    if k < 1:
        raise ValueError(f"RPS needs k >= 1 directions, got {k}")
    if k == 1:
        return [angle_direction(theta_degrees)]
    step = 2 * delta_degrees / (k - 1)
    return [angle_direction(theta_degrees - delta_degrees + i * step) for i in range(k)]


def rps_select(prompt: str, theta_degrees: float, sample: Callable[[str, int], List[Any]], rewards: Rewarder,
               objectives: Sequence[str], k: int = 5, delta_degrees: float = 10.0,
               per_direction: int = 1) -> Dict[str, Any]:
    """RPS: candidates sampled at ``k`` neighbouring directions, selected by the user's ``v*`` (``theta``)."""
    target = angle_direction(theta_degrees)
    pool: List[Any] = []
    for v in neighbour_directions(theta_degrees, k, delta_degrees):
        pool.extend(sample(direction_prompt(prompt, v, objectives), per_direction))
    return best_of_n(prompt, pool, rewards, target)
