"""Step-annotated data: trajectories with per-step labels, and step preference pairs.

**Trajectory** (one solution of a problem, its steps and how good each is)::

    {"prompt": "problem : 3 + 4 * 2 - 1 .",
     "steps": ["4 * 2 = 8", "3 + 8 = 1 1", "1 1 - 1 = 1 0", "answer 1 0"],
     "step_labels": [true, true, true, true],        # or "step_rewards": [1.0, 0.5, ...]
     "outcome": true}                                # optional: final answer right (bool or number)

Exactly one of ``step_labels`` (booleans, one per step) and ``step_rewards`` (finite numbers, one
per step) may be given; both may be absent (outcome-only data). ``outcome`` is a bool or a finite
number. Other numeric fields travel as ``extras``.

**Step pair** (two candidate next steps after a shared prefix of steps)::

    {"prompt": "problem : 3 + 4 * 2 - 1 .",
     "prefix_steps": ["4 * 2 = 8"],                  # may be empty
     "chosen_step": "3 + 8 = 1 1",
     "rejected_step": "3 + 8 = 1 2",
     "chosen_final": false, "rejected_final": false, # optional: the completion ends the solution
     "chosen_visits": 12, "rejected_visits": 3}      # optional numeric extras (search statistics)

``chosen_step`` / ``rejected_step`` is one step or a list of steps (a step plus its continuation,
as tree search gives them). A step pair *is* a preference pair whose prompt is the prompt followed
by the prefix steps: :func:`dpokit.data.step_pairs.step_pair_as_pair` gives the :class:`~dpokit.data.formats.PreferencePair`
(with token ids, so non-final completions carry no EOS) that every pairwise path (tokenization,
prompt-shared layout, the LM scorer, any pairwise loss) then trains on unchanged.

Steps are written ``" " + step`` joined by ``" " + separator``; a non-final completion ends with its
separator (the separator token belongs to the step it ends, which is how the step scorer
:mod:`dpokit.scoring.steps` finds segments); a final one ends with EOS.

Every error names the file and line (or record) and the field (:class:`~dpokit.errors.DataError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import DataError
from .files import iter_records

TRAJECTORY_FIELDS = ("prompt", "steps", "step_labels", "step_rewards", "outcome")
STEP_PAIR_FIELDS = ("prompt", "prefix_steps", "chosen_step", "rejected_step", "chosen_final", "rejected_final")


@dataclass
class StepTrajectory:
    prompt: str
    steps: List[str]
    step_labels: Optional[List[bool]] = None
    step_rewards: Optional[List[float]] = None
    outcome: Optional[float] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""


@dataclass
class StepPair:
    prompt: str
    prefix_steps: List[str]
    chosen: List[str]  # one step, or a step and its continuation
    rejected: List[str]
    chosen_final: bool = False
    rejected_final: bool = False
    extras: Dict[str, Any] = field(default_factory=dict)
    location: str = ""

    def as_record(self) -> Dict[str, Any]:
        record = {"prompt": self.prompt, "prefix_steps": list(self.prefix_steps),
                  "chosen_step": self.chosen[0] if len(self.chosen) == 1 else list(self.chosen),
                  "rejected_step": self.rejected[0] if len(self.rejected) == 1 else list(self.rejected),
                  "chosen_final": self.chosen_final, "rejected_final": self.rejected_final}
        record.update(self.extras)
        return record


# ---- field checks ---------------------------------------------------------------------------------

def _text(location: str, name: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        got = "missing (null)" if value is None else f"a {type(value).__name__}"
        raise DataError(location, name, f"must be a string, got {got}")
    if not allow_empty and not value.strip():
        raise DataError(location, name, "is empty", "every step needs text")
    return value


def _steps(location: str, name: str, value: Any, allow_empty: bool = False) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DataError(location, name, f"must be a list of step strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataError(location, name, "is an empty list", "give at least one step")
    return [_text(location, f"{name}[{j}]", step) for j, step in enumerate(value)]


def _number(location: str, name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)):
        raise DataError(location, name, f"must be a number or a bool, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise DataError(location, name, f"is {number}", "give a finite number")
    return number


def _bool(location: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DataError(location, name, f"must be true/false, got {value!r}")


def _extras(location: str, record: Dict[str, Any], known: Sequence[str]) -> Dict[str, float]:
    return {k: _number(location, k, v) for k, v in record.items()
            if k not in known and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _require(location: str, record: Dict[str, Any], names: Sequence[str], what: str) -> None:
    for name in names:
        if name not in record:
            raise DataError(location, name, "is missing", f"{what} need {list(names)} (got {sorted(map(str, record))})")


# ---- parsing --------------------------------------------------------------------------------------

def parse_trajectory(location: str, record: Dict[str, Any]) -> StepTrajectory:
    _require(location, record, ("prompt", "steps"), "step trajectories")
    prompt = _text(location, "prompt", record["prompt"], allow_empty=True)
    steps = _steps(location, "steps", record["steps"])
    labels = rewards = None
    if record.get("step_labels") is not None and record.get("step_rewards") is not None:
        raise DataError(location, "step_rewards", "is given together with 'step_labels'", "give one of them")
    for name in ("step_labels", "step_rewards"):
        raw = record.get(name)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise DataError(location, name, f"must be a list with one entry per step, got {type(raw).__name__}")
        if len(raw) != len(steps):
            raise DataError(location, name, f"has {len(raw)} entries for {len(steps)} steps",
                            "give exactly one entry per step")
        if name == "step_labels":
            labels = [_bool(location, f"{name}[{j}]", v) for j, v in enumerate(raw)]
        else:
            rewards = [_number(location, f"{name}[{j}]", v) for j, v in enumerate(raw)]
            if any(isinstance(v, bool) for v in raw):
                raise DataError(location, name, "holds booleans", "booleans go in 'step_labels'")
    outcome = None if record.get("outcome") is None else _number(location, "outcome", record["outcome"])
    return StepTrajectory(prompt, steps, labels, rewards, outcome, _extras(location, record, TRAJECTORY_FIELDS),
                          location)


def parse_step_pair(location: str, record: Dict[str, Any]) -> StepPair:
    _require(location, record, ("prompt", "chosen_step", "rejected_step"), "step pairs")
    prompt = _text(location, "prompt", record["prompt"], allow_empty=True)
    prefix = _steps(location, "prefix_steps", record.get("prefix_steps", []), allow_empty=True)
    chosen = _steps(location, "chosen_step", record["chosen_step"])
    rejected = _steps(location, "rejected_step", record["rejected_step"])
    chosen_final = _bool(location, "chosen_final", record.get("chosen_final", False))
    rejected_final = _bool(location, "rejected_final", record.get("rejected_final", False))
    if chosen == rejected and chosen_final == rejected_final:
        raise DataError(location, "rejected_step", "is identical to chosen_step", "a pair needs two different steps")
    return StepPair(prompt, prefix, chosen, rejected, chosen_final, rejected_final,
                    _extras(location, record, STEP_PAIR_FIELDS), location)


def load_trajectories(source: Any, limit: Optional[int] = None) -> List[StepTrajectory]:
    """Every record of ``source`` (a .jsonl/.json/.parquet/.csv file or a dataset) as a trajectory."""
    out = []
    for location, record in iter_records(source):
        if limit is not None and len(out) >= limit:
            break
        out.append(parse_trajectory(location, record))
    if not out:
        raise DataError(str(source), None, "contains no trajectories")
    return out


def load_step_pairs(source: Any, limit: Optional[int] = None) -> List[StepPair]:
    """Every record of ``source`` as a step pair."""
    out = []
    for location, record in iter_records(source):
        if limit is not None and len(out) >= limit:
            break
        out.append(parse_step_pair(location, record))
    if not out:
        raise DataError(str(source), None, "contains no step pairs")
    return out


# ---- step pairs as preference pairs ---------------------------------------------------------------

def steps_text(steps: Sequence[str], separator: str, final: bool) -> str:
    """``" s1 ; s2 ;"`` (non-final) or ``" s1 ; s2"`` (final): each step after a space, each non-final
    step followed by ``" " + separator``."""
    text = "".join(f" {s} {separator}" for s in steps[:-1])
    if steps:
        text += f" {steps[-1]}" + ("" if final else f" {separator}")
    return text


StepRecord = Union[StepTrajectory, StepPair]
