"""What the built-in number tasks share: prompts about a number, and seeded train/eval splits."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple


@dataclass
class NumberTask:
    """A task asking ``question`` about a ``digits``-digit number written digit by digit."""

    digits: int = 3
    warmup_accuracy: float = 0.25
    seed: int = 0
    question = "?"

    def prompt(self, number: int) -> str:
        return "number : " + " ".join(str(number).zfill(self.digits)) + f" . {self.question}"

    @staticmethod
    def number_of(prompt: str) -> int:
        body = prompt.split(":", 1)[1].split(".", 1)[0]
        return int(body.replace(" ", ""))

    def split_numbers(self, n_train: int, n_eval: int) -> Tuple[List[int], List[int]]:
        rng = random.Random(self.seed)
        numbers = list(range(10 ** self.digits))
        rng.shuffle(numbers)
        if n_train + n_eval > len(numbers):
            raise ValueError("not enough distinct numbers for the requested split")
        return numbers[:n_train], numbers[n_train:n_train + n_eval]


def build_ranked_lists(reward: Callable[[str, str], float], prompts: Sequence[str],
                       samples: Sequence[Sequence[str]]) -> List[dict]:
    """Ranked lists (``data.kind: lists``): every non-empty sample of a prompt with its ``reward(prompt,
    response)``; prompts whose samples all tie carry no preference and are left out."""
    rows = []
    for prompt, responses in zip(prompts, samples):
        responses = [r for r in responses if r.strip()]
        scores = [reward(prompt, r) for r in responses]
        if len(set(scores)) > 1:
            rows.append({"prompt": prompt, "responses": [" " + r for r in responses], "scores": scores})
    return rows
