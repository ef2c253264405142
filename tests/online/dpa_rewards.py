"""Reward functions of the dpa_rsf tests, named as ``file.py:function`` (loaded on their own, so no
package-relative imports here)."""


def two_rewards(prompts, responses):
    """Objective 1: closeness to three words; objective 2: its opposite plus the share of 'a' words."""
    out = []
    for text in responses:
        words = text.split()
        first = -abs(len(words) - 3)
        out.append([first, -first + (words.count("a") / len(words) if words else 0.0)])
    return out


def first_reward(prompts, responses):
    return [[row[0]] for row in two_rewards(prompts, responses)]
