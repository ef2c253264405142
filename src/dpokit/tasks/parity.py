"""The built-in task: say whether a number is even or odd, with a verifiable reward.

Prompt: ``number : 4 7 2 . even or odd ?`` (digits are separate tokens).
Answer: one of a few phrasings ending in ``even`` or ``odd`` (``it is even``, ``answer : odd`` ...).
Reward: 1 if the last parity word of the answer is right, else 0 (also 0 when no parity word).

The supervised warm-up demonstrations are right only ``warmup_accuracy`` of the time (the demo uses
25%: demonstrators with a systematic error), so the warm-up model learns to answer, and answers
right only about that often. Preference pairs sampled from it and labelled by the reward carry the
signal the demonstrations lack, which is what preference training should pick up: held-out reward
rises well above the warm-up's (0.23 -> 0.90 with DPO on 2 CPU cores in ~20 s).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from .numbers import NumberTask

PHRASINGS = ("{p}", "it is {p}", "answer : {p}", "the number is {p}", "i think it is {p}")
PARITY_WORDS = ("even", "odd")


@dataclass
class ParityTask(NumberTask):
    question = "even or odd ?"

    def answer(self, number: int, correct: bool, rng: random.Random) -> str:
        parity = "even" if number % 2 == 0 else "odd"
        if not correct:
            parity = "odd" if parity == "even" else "even"
        return rng.choice(PHRASINGS).format(p=parity)

    def demonstrations(self, numbers: Sequence[int]) -> List[Tuple[str, str]]:
        rng = random.Random(self.seed + 1)
        return [(self.prompt(n), self.answer(n, rng.random() < self.warmup_accuracy, rng)) for n in numbers]

    def reward(self, prompt: str, response: str) -> float:
        words = [w for w in response.split() if w in PARITY_WORDS]
        if not words:
            return 0.0
        expected = "even" if self.number_of(prompt) % 2 == 0 else "odd"
        return 1.0 if words[-1] == expected else 0.0

    def vocabulary_corpus(self) -> List[str]:
        """Texts covering every word the task uses (to train the word-level tokenizer)."""
        words = [str(d) for d in range(10)] + ["number", ":", ".", "even", "or", "odd", "?"]
        phrasings = [p.format(p=w) for p in PHRASINGS for w in PARITY_WORDS]
        return [" ".join(words)] + phrasings


def build_pairs(
    task: ParityTask, prompts: Sequence[str], samples: Sequence[Sequence[str]], seed: int = 0
) -> List[dict]:
    """On-policy pairs: per prompt, a rewarded sample as chosen and an unrewarded one as rejected.

    Prompts whose samples all get the same reward give no pair (nothing to prefer).
    """
    rng = random.Random(seed)
    pairs = []
    for prompt, responses in zip(prompts, samples):
        good = sorted({r for r in responses if task.reward(prompt, r) == 1.0})
        bad = sorted({r for r in responses if task.reward(prompt, r) == 0.0})
        if good and bad:
            pairs.append({"prompt": prompt, "chosen": " " + rng.choice(good), "rejected": " " + rng.choice(bad)})
    return pairs


def parity_reward(prompt: str, response: str) -> float:
    """The parity task's verifiable reward as a judge (the built-in judge ``parity``): 1 when the
    last ``even``/``odd`` word of the response is right for the prompt's number, else 0."""
    return ParityTask().reward(prompt, response)
