"""A built-in task with a graded, verifiable reward: name the last digit of a number.

Prompt: ``number : 4 7 2 . last digit ?`` (digits are separate tokens).
Answer: one of a few phrasings ending in a digit (``2``, ``it is 2``, ``answer : 2`` ...).
Reward: ``max(0, 1 - d / 4)`` where ``d`` is the circular distance (mod 10) between the last digit
word of the answer and the number's last digit, so it takes five levels, 1, 0.75, 0.5, 0.25 and 0
(0 also when the answer holds no digit).

Where the parity task (:mod:`dpokit.tasks.parity`) has a binary reward, which makes every ranked
list two tie groups and every margin the same, this one orders near misses above far misses, so
ranked lists of K responses, reward margins and label noise between near-equal answers mean
something. The warm-up demonstrations are right ``warmup_accuracy`` of the time; the others miss by
1 to 5 (uniform, either direction), so the warm-up model's samples spread over every level.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from .numbers import NumberTask, build_ranked_lists

PHRASINGS = ("{d}", "it is {d}", "answer : {d}", "the digit is {d}", "i think it is {d}")
DIGITS = tuple(str(d) for d in range(10))
MAX_DISTANCE = 4  # a miss by this much or more earns nothing


def distance(a: int, b: int) -> int:
    """Circular distance between two digits (0..5)."""
    d = abs(a - b) % 10
    return min(d, 10 - d)


def level(d: int) -> float:
    return max(0.0, 1.0 - d / MAX_DISTANCE)


@dataclass
class GradedTask(NumberTask):
    question = "last digit ?"

    def digit_of(self, number: int) -> int:
        """The digit the question asks for (here the last one; subclasses ask for another)."""
        return number % 10

    def answer(self, number: int, miss: int, rng: random.Random) -> str:
        return rng.choice(PHRASINGS).format(d=(self.digit_of(number) + miss) % 10)

    def demonstrations(self, numbers: Sequence[int]) -> List[Tuple[str, str]]:
        rng = random.Random(self.seed + 1)
        rows = []
        for n in numbers:
            miss = 0 if rng.random() < self.warmup_accuracy else rng.choice((1, 2, 3, 4, 5)) * rng.choice((-1, 1))
            rows.append((self.prompt(n), self.answer(n, miss, rng)))
        return rows

    def reward(self, prompt: str, response: str) -> float:
        words = [w for w in response.split() if w in DIGITS]
        if not words:
            return 0.0
        return level(distance(int(words[-1]), self.digit_of(self.number_of(prompt))))

    def vocabulary_corpus(self) -> List[str]:
        """Texts covering every word the task uses (to train the word-level tokenizer)."""
        words = list(DIGITS) + ["number", ":", "."] + self.question.split()
        phrasings = [p.format(d=d) for p in PHRASINGS for d in DIGITS]
        return [" ".join(words)] + phrasings


def build_graded_pairs(task: GradedTask, prompts: Sequence[str], samples: Sequence[Sequence[str]],
                       seed: int = 0) -> List[dict]:
    """On-policy pairs: per prompt, a sample of the best reward level as chosen and one of the worst as
    rejected, with both scores (``score_chosen``/``score_rejected``). Prompts whose samples all get the
    same reward give no pair; empty samples (an immediate end of sequence) are left out."""
    rng = random.Random(seed)
    pairs = []
    for prompt, responses in zip(prompts, samples):
        scored = {}
        for r in (r for r in responses if r.strip()):
            scored.setdefault(task.reward(prompt, r), set()).add(r)
        if len(scored) < 2:
            continue
        best, worst = max(scored), min(scored)
        pairs.append({"prompt": prompt, "chosen": " " + rng.choice(sorted(scored[best])),
                      "rejected": " " + rng.choice(sorted(scored[worst])),
                      "score_chosen": best, "score_rejected": worst})
    return pairs


def build_graded_lists(task: GradedTask, prompts: Sequence[str], samples: Sequence[Sequence[str]]) -> List[dict]:
    """Ranked lists: every non-empty sample of a prompt with its reward; prompts whose samples all tie
    are left out."""
    return build_ranked_lists(task.reward, prompts, samples)


def graded_reward(prompt: str, response: str) -> float:
    """The graded task's reward as a judge (``dpokit.tasks.graded:graded_reward``)."""
    return GradedTask().reward(prompt, response)
