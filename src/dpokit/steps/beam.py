"""Value-guided step-level beam search, OREO's test-time search (Wang et al. 2024, arXiv 2412.16145, §4):
keep ``B`` partial solutions; expand each unfinished one with ``expansions`` sampled next steps
(:class:`~dpokit.steps.expand.StepSampler`, one shared-prefix forward per beam); keep the top ``B`` of
all candidates and finished solutions by the value of their state; stop when every kept beam is
finished or after ``max_steps`` steps. The answer is the highest-valued beam.

``value_fn(sequences, finals) -> [value]`` scores token-id sequences (prompt included);
:meth:`dpokit.steps.value.ValueModel.state_values` is one. With ``beam_width = expansions = 1`` and a
greedy sampler this is greedy decoding, step by step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

from .expand import StepSampler

ValueFn = Callable[[List[List[int]], List[bool]], List[float]]


@dataclass
class Beam:
    ids: List[int]  # prompt and steps so far
    steps: int = 0
    final: bool = False
    value: float = 0.0


def value_beam_search(sampler: StepSampler, value_fn: ValueFn, prompt_ids: Sequence[int], beam_width: int = 3,
                      expansions: int = 0, max_steps: int = 8) -> List[Beam]:
    """The kept beams after the search, best (highest value) first; ``expansions`` defaults to ``beam_width``."""
    if beam_width < 1 or max_steps < 1 or expansions < 0:
        raise ValueError(f"value_beam_search: beam_width and max_steps >= 1, expansions >= 0 (got {beam_width}, "
                         f"{max_steps}, {expansions})")
    n = expansions or beam_width
    beams = [Beam(list(prompt_ids))]
    for _ in range(max_steps):
        if all(b.final for b in beams):
            break
        pool = [b for b in beams if b.final]
        fresh: List[Beam] = []
        seen = {tuple(b.ids) for b in pool}
        for beam in beams:
            if beam.final:
                continue
            for cand in sampler.sample(beam.ids, n):
                ids = beam.ids + list(cand.ids)
                if not cand.ids or tuple(ids) in seen:
                    continue
                seen.add(tuple(ids))
                fresh.append(Beam(ids, beam.steps + 1, cand.final))
        if fresh:
            for beam, value in zip(fresh, value_fn([b.ids for b in fresh], [b.final for b in fresh])):
                beam.value = float(value)
        pool += fresh
        if not pool:
            break
        beams = sorted(pool, key=lambda b: b.value, reverse=True)[:beam_width]
    return beams
