"""DSTC: preference pairs from self-generated code and self-generated tests [partial].

Liu et al. 2024, "Direct preference learning with only Self-generated Tests and Code" (arXiv
2411.13611). What the abstract establishes: pairs are built only from code and tests the policy wrote,
executed by an interpreter; a **minimax selection** and **test-code concatenation** reduce the harm
of wrong self-written tests; the pairs train DPO or KTO.

[partial] The selection rule below is a reconstruction from the abstract, not read from the paper
or code; treat it as this library's reading of the method:

1. ``E[i, j] = 1`` if code ``c_i`` passes test ``t_j`` (each pair run in the sandbox, with a timeout).
2. chosen code ``c+ = argmax_i sum_j E[i, j]`` (passes the most self-tests; ties: first);
   chosen tests ``T+ = {t_j : E[c+, j] = 1}``.
3. rejected code ``c- = argmin_i sum_{j in T+} E[i, j]`` (the fewest of the chosen tests: the minimax
   step; ties: first); rejected tests ``T- = {t_j : E[c-, j] = 0}``.
4. ``y+ = c+ + T+``, ``y- = c- + T-`` (concatenation); keep the pair only when the pass-count gap on
   ``T+`` is positive.

Every execution goes through :func:`dpokit.steps.sandbox.run_code`: model-written code never runs in
this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .sandbox import run_code

__all__ = ["DSTCPair", "execution_matrix", "minimax_select", "concatenate", "build_pair", "to_dpo", "to_kto"]

Runner = Callable[[str], bool]


def sandbox_runner(timeout: float = 5.0, memory_mb: int = 512) -> Runner:
    """``program -> passed`` through the sandbox (exit status 0 within ``timeout``)."""
    return lambda program: run_code(program, timeout=timeout, memory_mb=memory_mb).ok


def execution_matrix(codes: Sequence[str], tests: Sequence[str], runner: Optional[Runner] = None) -> List[List[int]]:
    """``E[i][j] = 1`` when ``codes[i]`` followed by ``tests[j]`` runs cleanly (every pair executed
    separately, so one failing test cannot hide another)."""
    runner = runner or sandbox_runner()
    return [[int(runner(concatenate(code, [test]))) for test in tests] for code in codes]


@dataclass
class Selection:
    chosen: int
    rejected: int
    chosen_tests: List[int]
    rejected_tests: List[int]
    chosen_passes: int
    rejected_passes: int

    @property
    def gap(self) -> int:
        return self.chosen_passes - self.rejected_passes


def minimax_select(matrix: Sequence[Sequence[int]]) -> Selection:
    """[partial] The minimax selection of the module docstring on an execution matrix."""
    if not matrix or not matrix[0]:
        raise ValueError("minimax_select needs at least one code candidate and one test")
    width = len(matrix[0])
    if any(len(row) != width for row in matrix):
        raise ValueError("minimax_select: every row of the execution matrix needs one entry per test")
    totals = [sum(row) for row in matrix]
    chosen = max(range(len(matrix)), key=lambda i: (totals[i], -i))
    chosen_tests = [j for j in range(width) if matrix[chosen][j]]
    on_chosen = [sum(matrix[i][j] for j in chosen_tests) for i in range(len(matrix))]
    rejected = min(range(len(matrix)), key=lambda i: (on_chosen[i], i))
    rejected_tests = [j for j in range(width) if not matrix[rejected][j]]
    return Selection(chosen, rejected, chosen_tests, rejected_tests, on_chosen[chosen], on_chosen[rejected])


def concatenate(code: str, tests: Sequence[str]) -> str:
    """Test-code concatenation: the code, then its tests, one program."""
    parts = [code.rstrip("\n")] + [t.rstrip("\n") for t in tests]
    return "\n\n".join(parts) + "\n"


@dataclass
class DSTCPair:
    prompt: str
    chosen: str
    rejected: str
    selection: Selection
    extras: Dict[str, float] = field(default_factory=dict)


def build_pair(prompt: str, codes: Sequence[str], tests: Sequence[str], runner: Optional[Runner] = None,
               min_gap: int = 1) -> Optional[DSTCPair]:
    """[partial] One DSTC pair for ``prompt`` from the policy's ``codes`` and ``tests``, or None when
    the chosen and rejected code pass equally many of the chosen tests (gap < ``min_gap``)."""
    if len(codes) < 2:
        raise ValueError(f"build_pair needs at least two code candidates, got {len(codes)}")
    if not tests:
        raise ValueError("build_pair needs at least one test")
    sel = minimax_select(execution_matrix(codes, tests, runner))
    if sel.chosen == sel.rejected or sel.gap < min_gap:
        return None
    chosen = concatenate(codes[sel.chosen], [tests[j] for j in sel.chosen_tests])
    rejected = concatenate(codes[sel.rejected], [tests[j] for j in sel.rejected_tests])
    return DSTCPair(prompt, chosen, rejected, sel, {"dstc_gap": float(sel.gap)})


def to_dpo(pairs: Sequence[DSTCPair]) -> List[Dict[str, object]]:
    """Pair records (``prompt``/``chosen``/``rejected``) for ``data.kind: pairs``."""
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras} for p in pairs]


def to_kto(pairs: Sequence[DSTCPair]) -> List[Dict[str, object]]:
    """Unpaired records (``prompt``/``completion``/``label``) for ``data.kind: unpaired``: ``y+``
    desirable, ``y-`` undesirable."""
    out: List[Dict[str, object]] = []
    for p in pairs:
        out.append({"prompt": p.prompt, "completion": p.chosen, "label": True})
        out.append({"prompt": p.prompt, "completion": p.rejected, "label": False})
    return out
