"""A built-in multi-step task with checkable steps: evaluate a short arithmetic expression.

Prompt: ``problem : 3 + 4 * 2 - 1 .`` (every character a separate word, so the word-level tokenizer
has a vocabulary of a few dozen words). A solution is a list of steps, each one equation that
reduces the expression by one operation, then the final answer::

    4 * 2 = 8 ; 3 + 8 = 1 1 ; 1 1 - 1 = 1 0 ; answer 1 0

Steps end with the separator word ``;`` (:data:`STEP_SEPARATOR`); the answer step ends the
completion (EOS). The reduction order is fixed (:func:`gold_steps`): the leftmost ``*`` first while
there is one, then the leftmost operation; so every problem has exactly one gold solution.

The verifier (:meth:`ArithmeticTask.verify`) replays the steps against the expression: step ``i`` is
correct when every step before it is correct and it is the gold reduction of the current expression
(operands and result); after the first wrong step every later step is labelled wrong (the "first
error" convention of process-reward labels). The outcome is correct when the answer equals the
expression's value, however it was reached.

:meth:`ArithmeticTask.trajectory` writes solutions with a controllable per-step error rate: a step is
wrong with probability ``step_error_rate`` (a result off by 1 to 3), and the solution then continues
consistently from the wrong value, so its answer is wrong too. A tiny model warmed up on such
solutions makes step errors at about that rate; step-level preference training should lower it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

OPS = ("+", "-", "*")
STEP_SEPARATOR = ";"
ANSWER_WORD = "answer"


def spaced(text: str) -> str:
    """``"4*2=8"`` -> ``"4 * 2 = 8"`` (one word per character)."""
    return " ".join(ch for ch in text if not ch.isspace())


def unspaced(text: str) -> str:
    return "".join(text.split())


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def next_index(ops: Sequence[str]) -> int:
    """Position of the operation the gold solution reduces next: the leftmost ``*``, else the leftmost."""
    return ops.index("*") if "*" in ops else 0


def gold_steps(numbers: Sequence[int], ops: Sequence[str]) -> List[Tuple[int, str, int, int]]:
    """The gold reductions ``(a, op, b, a op b)`` in order."""
    numbers, ops = list(numbers), list(ops)
    steps = []
    while ops:
        i = next_index(ops)
        a, op, b = numbers[i], ops[i], numbers[i + 1]
        value = apply(a, op, b)
        steps.append((a, op, b, value))
        numbers[i:i + 2] = [value]
        del ops[i]
    return steps


def step_text(a: int, op: str, b: int, c: int) -> str:
    return spaced(f"{a}{op}{b}={c}")


def answer_text(value: int) -> str:
    return f"{ANSWER_WORD} {spaced(str(value))}"


@dataclass(frozen=True)
class Problem:
    numbers: Tuple[int, ...]
    ops: Tuple[str, ...]

    @property
    def expression(self) -> str:
        return "".join(f"{n}{op}" for n, op in zip(self.numbers, self.ops)) + str(self.numbers[-1])

    @property
    def value(self) -> int:
        return gold_steps(self.numbers, self.ops)[-1][3]

    def gold(self) -> List[str]:
        """Gold steps as text, the answer step last."""
        return [step_text(*s) for s in gold_steps(self.numbers, self.ops)] + [answer_text(self.value)]


@dataclass
class Verdict:
    """Per-step correctness (``steps``: one bool per step, the answer step last when present), the
    outcome, and the index of the first wrong step (None when every step is right)."""

    steps: List[bool]
    outcome: bool
    first_error: Optional[int]
    answer: Optional[int] = None

    @property
    def step_accuracy(self) -> float:
        return sum(self.steps) / len(self.steps) if self.steps else 0.0


def parse_equation(text: str) -> Optional[Tuple[int, str, int, int]]:
    """``"4 * 2 = 8"`` -> ``(4, "*", 2, 8)``; None when it is not one binary equation of integers."""
    body = unspaced(text)
    if body.count("=") != 1:
        return None
    left, right = body.split("=")
    for i in range(1, len(left)):
        if left[i] in OPS and left[:i].isdigit() and left[i + 1:].isdigit() and right.lstrip("-").isdigit():
            return int(left[:i]), left[i], int(left[i + 1:]), int(right)
    return None


def parse_answer(text: str) -> Optional[int]:
    words = text.split()
    if len(words) < 2 or words[0] != ANSWER_WORD:
        return None
    body = "".join(words[1:])
    return int(body) if body.lstrip("-").isdigit() else None


def split_steps(completion: str) -> List[str]:
    """A completion text -> its steps (separator removed, empty pieces dropped)."""
    return [s.strip() for s in completion.split(STEP_SEPARATOR) if s.strip()]


def join_steps(steps: Sequence[str], final: bool = True) -> str:
    """Steps -> completion text; with ``final=False`` the text ends with a separator (a prefix that
    the next step continues)."""
    text = f" {STEP_SEPARATOR} ".join(steps)
    return text if final or not steps else text + f" {STEP_SEPARATOR}"


@dataclass
class ArithmeticTask:
    """Problems with ``n_ops`` operations on numbers 1..``max_number``; intermediate values stay in
    ``0..max_value`` (problems that leave it are redrawn), so no negative numbers appear."""

    n_ops: int = 2
    max_number: int = 9
    max_value: int = 99
    seed: int = 0
    ops: Tuple[str, ...] = field(default=OPS)

    def prompt(self, problem: Problem) -> str:
        return f"problem : {spaced(problem.expression)} ."

    @staticmethod
    def problem_of(prompt: str) -> Problem:
        body = unspaced(prompt.split(":", 1)[1].rsplit(".", 1)[0])
        numbers, ops, current = [], [], ""
        for ch in body:
            if ch in OPS:
                numbers.append(int(current))
                ops.append(ch)
                current = ""
            else:
                current += ch
        numbers.append(int(current))
        return Problem(tuple(numbers), tuple(ops))

    def sample_problem(self, rng: random.Random) -> Problem:
        while True:
            numbers = tuple(rng.randint(1, self.max_number) for _ in range(self.n_ops + 1))
            ops = tuple(rng.choice(self.ops) for _ in range(self.n_ops))
            if all(0 <= s[3] <= self.max_value for s in gold_steps(numbers, ops)):
                return Problem(numbers, ops)

    def split(self, n_train: int, n_eval: int) -> Tuple[List[Problem], List[Problem]]:
        """Disjoint train and held-out problems (distinct expressions), seeded."""
        rng = random.Random(self.seed)
        seen, problems = set(), []
        for _ in range(200 * (n_train + n_eval)):
            if len(problems) == n_train + n_eval:
                break
            p = self.sample_problem(rng)
            if p not in seen:
                seen.add(p)
                problems.append(p)
        if len(problems) < n_train + n_eval:
            raise ValueError(f"only {len(problems)} distinct problems for the requested {n_train + n_eval}")
        return problems[:n_train], problems[n_train:]

    # ---- trajectories ----------------------------------------------------------------------------
    def trajectory(self, problem: Problem, step_error_rate: float, rng: random.Random) -> List[str]:
        """A solution whose every step is wrong with probability ``step_error_rate`` (result off by 1..3,
        chosen so that no value of the solution is negative; a step with no such wrong value stays
        right); later steps continue from the written (possibly wrong) value."""
        numbers, ops = list(problem.numbers), list(problem.ops)
        steps = []
        while ops:
            i = next_index(ops)
            a, op, b = numbers[i], ops[i], numbers[i + 1]
            value = apply(a, op, b)
            if rng.random() < step_error_rate:
                offsets = [-3, -2, -1, 1, 2, 3]
                rng.shuffle(offsets)
                for offset in offsets:  # a wrong value from which the rest of the solution stays >= 0
                    rest = numbers[:i] + [value + offset] + numbers[i + 2:]
                    if value + offset >= 0 and all(s[3] >= 0 for s in gold_steps(rest, ops[:i] + ops[i + 1:])):
                        value += offset
                        break
            steps.append(step_text(a, op, b, value))
            numbers[i:i + 2] = [value]
            del ops[i]
        steps.append(answer_text(numbers[0]))
        return steps

    def demonstrations(self, problems: Sequence[Problem], step_error_rate: float,
                       seed: int = 1) -> List[Tuple[str, str]]:
        """``(prompt, completion text)`` warm-up demonstrations with noisy steps."""
        rng = random.Random(self.seed + seed)
        return [(self.prompt(p), join_steps(self.trajectory(p, step_error_rate, rng))) for p in problems]

    # ---- verifier --------------------------------------------------------------------------------
    def verify(self, problem: Problem, steps: Sequence[str]) -> Verdict:
        """Per-step and outcome correctness of ``steps`` (the answer step last) for ``problem``."""
        gold = gold_steps(problem.numbers, problem.ops)
        labels: List[bool] = []
        ok = True
        answer = None
        for i, text in enumerate(steps):
            if i < len(gold):
                ok = ok and parse_equation(text) == gold[i]
            else:  # the answer step (and anything after it)
                value = parse_answer(text)
                if i == len(gold):
                    answer = value
                ok = ok and i == len(gold) and value == problem.value
            labels.append(ok)
        if len(steps) <= len(gold):  # no answer step: the answer is missing, the outcome wrong
            answer = None
        first_error = next((i for i, good in enumerate(labels) if not good), None)
        return Verdict(labels, answer == problem.value and answer is not None, first_error, answer)

    def verify_text(self, prompt: str, completion: str) -> Verdict:
        return self.verify(self.problem_of(prompt), split_steps(completion))

    def reward(self, prompt: str, response: str) -> float:
        """Outcome reward: 1 when the final answer is right, else 0 (a judge for monitors and evaluation)."""
        return 1.0 if self.verify_text(prompt, response).outcome else 0.0

    def is_terminal(self, step: str) -> bool:
        return step.split()[:1] == [ANSWER_WORD]

    def vocabulary_corpus(self) -> List[str]:
        """Texts covering every word the task uses (to train the word-level tokenizer)."""
        words = [str(d) for d in range(10)] + list(OPS) + ["=", STEP_SEPARATOR, ANSWER_WORD, "problem", ":", "."]
        return [" ".join(words)]


def arithmetic_reward(prompt: str, response: str) -> float:
    """The arithmetic task's outcome reward as a judge (``dpokit.tasks.arithmetic:arithmetic_reward``)."""
    return ArithmeticTask().reward(prompt, response)


class ArithmeticSearchTask:
    """The arithmetic task as tree search sees it (``online.options.task`` of ``mcts_dpo``): outcomes,
    gold steps and the step checker (the ``evaluator: verifier`` ablation), all from the prompt text."""

    separator = STEP_SEPARATOR

    def __init__(self, task: Optional[ArithmeticTask] = None):
        self.task = task or ArithmeticTask()

    def outcome(self, prompt: str, steps: Sequence[str]) -> bool:
        return self.task.verify(self.task.problem_of(prompt), steps).outcome

    def gold(self, prompt: str) -> List[str]:
        return self.task.problem_of(prompt).gold()

    def check(self, prompt: str, steps: Sequence[str]) -> float:
        """1 when every step so far is right, else 0."""
        return float(all(self.task.verify(self.task.problem_of(prompt), steps).steps))


def search_task() -> ArithmeticSearchTask:
    """``dpokit.tasks.arithmetic:search_task``: the arithmetic task for ``online.strategy: mcts_dpo``."""
    return ArithmeticSearchTask()
