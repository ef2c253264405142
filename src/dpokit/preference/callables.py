"""Judges for generation-based evaluation: ``judge(prompt, response) -> float`` (higher is better).

``load_judge(spec)`` accepts

* a built-in name: ``parity`` (the reward of the built-in task behind ``dpokit demo``: 1 when the
  last ``even``/``odd`` word of the response is right for the prompt's number, else 0);
* ``package.module:function`` (an importable module);
* ``path/to/file.py:function`` (a Python file, loaded without putting it on ``sys.path``);
* a judge object with ``score(prompts, responses) -> list`` (e.g. ``dpokit.preference.judges.RewardModelJudge``;
  ``dpokit eval --reward-model PATH`` builds one).

A judge may return ``bool`` or ``int``; scores are converted to ``float``. A verifier is a judge
returning 0/1; a reward model is a judge wrapping the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, Dict, List, Sequence

Judge = Callable[[str, str], float]


def parity_judge(prompt: str, response: str) -> float:
    from ..tasks.parity import ParityTask

    return ParityTask().reward(prompt, response)


BUILTIN_JUDGES: Dict[str, Judge] = {"parity": parity_judge}


def load_judge(spec) -> Judge:
    """A callable ``judge(prompt, response)`` from a spec (see the module docstring); callables and
    pointwise judge objects (with ``score(prompts, responses)``, e.g. :mod:`dpokit.preference.judges`) pass as is."""
    if callable(spec) or hasattr(spec, "score"):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"judge: expected a name or 'module:function', got {spec!r}")
    if spec in BUILTIN_JUDGES:
        return BUILTIN_JUDGES[spec]
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


def score_all(judge, prompts: Sequence[str], responses: Sequence[str]) -> List[float]:
    """Scores of ``(prompt, response)`` pairs: one batched ``judge.score`` call for judge objects
    (a reward model scores in batches), else ``judge(prompt, response)`` per pair."""
    if hasattr(judge, "score"):
        scores = list(judge.score(list(prompts), list(responses)))
        if len(scores) != len(responses):
            raise ValueError(f"judge returned {len(scores)} scores for {len(responses)} responses")
        return [float(s) for s in scores]
    return [float(judge(p, r)) for p, r in zip(prompts, responses)]


def judge_name(spec) -> str:
    if isinstance(spec, str):
        return spec
    if hasattr(spec, "score"):
        return type(spec).__name__
    return getattr(spec, "__qualname__", getattr(spec, "__name__", repr(spec)))
