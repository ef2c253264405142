"""DPA's preference-conditioned iterative rejection-sampling fine-tuning (Wang et al., ACL 2024,
arXiv 2402.18571; RLHFlow/Directional-Preference-Alignment README and algorithm figure) as the round
strategy ``dpa_rsf``::

    for round t:
        for each prompt x of the round: v ~ p(v)        (a unit direction in reward space)
            y_1..y_n ~ pi_t(. | x, v)                    (v rendered in the prompt: direction_prompt)
            y* = argmax_k v . r(x, y_k)                  (r: the multi-objective reward, m values)
        pi_{t+1} = SFT of pi_t on {(x | v, y*)}          (loss sft_unpaired)

``n`` is ``online.samples_per_prompt``. ``p(v)``: ``theta`` uniform on ``online.options.angles`` (degrees,
two objectives, ``v = (cos theta, sin theta)``; default ``[0, 45]``, the arc the released model suggests)
or a uniform choice among ``online.options.directions``. The reward: ``reward_model`` (a directory from
``dpokit train-rm --kind multi``) or ``rewards`` (``"module:function"`` / ``"file.py:function"``,
``fn(prompts, responses) -> [N, m]``, with ``objectives`` naming the columns). The reward model sees the
prompt without the direction text, as DPA's RM template has only the user prompt and the response.

PARTIAL: the README gives the algorithm's shape; ``n``, the number of rounds, ``p(v)`` and the SFT
settings are not given (the defaults here are ours). ``condition: false`` leaves the direction out of the
prompt (a plain RSF run under the scalarized reward).
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..data.prompts import is_empty
from ..errors import ConfigError
from ..losses import resolve_name
from ..preference.directional import load_rewarder
from ..preference.multi_objective import DIRECTION_TEMPLATE, angle_direction, direction_prompt, scalarize, unit_direction
from .rounds import JudgedPrompt
from .strategies import RoundStrategy, register_strategy


def pick_best(values: Sequence[float], responses: Sequence[str]) -> int:
    """The index of the largest ``v . r`` among the non-empty responses (ties: the first); -1 if none."""
    best = -1
    for i, (value, text) in enumerate(zip(values, responses)):
        if not is_empty(text) and (best < 0 or value > values[best]):
            best = i
    return best


def sample_directions(count: int, seed: int, angles: Sequence[float] = (0.0, 45.0),
                      directions: Any = None) -> List[List[float]]:
    """``count`` unit directions: uniform choices among ``directions``, else ``(cos t, sin t)`` with ``t``
    uniform on ``angles`` (degrees)."""
    rng = random.Random(seed)
    if directions:
        return [unit_direction(rng.choice(directions), len(directions[0])).tolist() for _ in range(count)]
    low, high = float(angles[0]), float(angles[1])
    return [angle_direction(rng.uniform(low, high)) for _ in range(count)]


@register_strategy("dpa_rsf")
class DPARejectionSampling(RoundStrategy):
    """DPA's iterative rejection-sampling fine-tuning (PARTIAL; Wang et al. 2024, arXiv 2402.18571): each
    round, a sampled direction ``v`` per prompt, ``n`` samples of the ``v``-conditioned prompt from the
    current policy, the one with the largest ``v . r`` fine-tuned on (``sft_unpaired``). No judge: the
    multi-objective reward is ``online.options.reward_model`` or ``online.options.rewards``."""

    reference = "previous"
    needs_judge = False
    refreshable = False
    lists_ok = False
    min_samples = 1
    row_kinds = ("unpaired",)  # what rows() builds (preflight checks the loss against it)
    verified = "partial"
    source = "Wang et al. 2024, arXiv 2402.18571 (README + algorithm figure)"
    OPTIONS = {"reward_model": None, "rewards": None, "objectives": None, "angles": [0.0, 45.0], "directions": None,
               "template": DIRECTION_TEMPLATE, "condition": True, "rm_batch_size": 16, "rm_max_length": 1024}

    @classmethod
    def validate_options(cls, options: Dict[str, Any]) -> None:
        where = "online.options"
        if (options.get("reward_model") is None) == (options.get("rewards") is None):
            raise ConfigError(f"{where}: strategy dpa_rsf needs exactly one of reward_model (a multi-objective reward "
                              "model directory) and rewards ('module:function' returning one vector per response)")
        objectives = options.get("objectives")
        if options.get("rewards") is not None and not objectives:
            raise ConfigError(f"{where}.objectives: name the columns rewards returns, e.g. [correctness, verbosity]")
        if objectives is not None and (not isinstance(objectives, list) or not all(isinstance(o, str) for o in objectives)):
            raise ConfigError(f"{where}.objectives: expected a list of names, got {objectives!r}")
        directions = options.get("directions")
        if directions is not None:
            if not isinstance(directions, list) or not directions or not all(isinstance(d, list) for d in directions):
                raise ConfigError(f"{where}.directions: expected a list of direction vectors, got {directions!r}")
            for i, d in enumerate(directions):
                if len(d) != len(directions[0]) or objectives and len(d) != len(objectives):
                    raise ConfigError(f"{where}.directions[{i}]: {d} has {len(d)} components; expected "
                                      f"{len(objectives) if objectives else len(directions[0])}")
                if not all(isinstance(x, (int, float)) for x in d) or not math.hypot(*d) > 0:
                    raise ConfigError(f"{where}.directions[{i}]: {d} is not a non-zero vector of numbers")
        angles = options.get("angles", cls.OPTIONS["angles"])
        if not (isinstance(angles, list) and len(angles) == 2 and all(isinstance(a, (int, float)) for a in angles)
                and angles[0] <= angles[1]):
            raise ConfigError(f"{where}.angles: expected [low, high] in degrees with low <= high, got {angles!r}")
        if directions is None and objectives is not None and len(objectives) != 2:
            raise ConfigError(f"{where}.angles: directions by angle need two objectives, got {len(objectives)}; "
                              "list the directions instead (online.options.directions)")
        template = options.get("template", DIRECTION_TEMPLATE)
        if not isinstance(template, str) or "{terms}" not in template:
            raise ConfigError(f"{where}.template: expected a text with '{{terms}}', got {template!r}")

    @classmethod
    def loss_section(cls, base, options):
        name = resolve_name(base.get("name", "dpo"))
        if name == "sft_unpaired":
            return dict(base)
        if name != "dpo":  # dpo: the configuration's default, replaced as SPPO replaces it
            raise ConfigError(f"online.strategy dpa_rsf fine-tunes on the selected responses (loss sft_unpaired), "
                              f"not {name!r}")
        return {"name": "sft_unpaired"}

    def setup(self) -> None:
        o = self.opts
        try:
            self.rewards, self.objectives = load_rewarder(
                o["reward_model"], o["rewards"], o["objectives"], int(o["rm_batch_size"]), int(o["rm_max_length"]),
                device=next(self.loop.policy.parameters()).device)
        except ValueError as err:
            raise ConfigError(f"online.options: {err}") from None
        if o["directions"] is None and len(self.objectives) != 2:
            raise ConfigError(f"online.options.angles: directions by angle need two objectives; the reward has "
                              f"{len(self.objectives)} ({', '.join(self.objectives)}): list online.options.directions")
        wrong = [d for d in o["directions"] or [] if len(d) != len(self.objectives)]
        if wrong:
            raise ConfigError(f"online.options.directions: {wrong[0]} has {len(wrong[0])} components; the reward has "
                              f"{len(self.objectives)} objectives ({', '.join(self.objectives)})")
        self.items: List[Tuple[Any, List[float]]] = []
        self.vectors: Dict[int, List[List[float]]] = {}

    def directions_for(self, r: int, count: int) -> List[List[float]]:
        return sample_directions(count, self.loop.config.train.seed * 1_000_003 + r, self.opts["angles"],
                                 self.opts["directions"])

    def round_prompts(self, r: int) -> List[Any]:
        prompts = self.loop.default_round_prompts(r)
        self.items = list(zip(prompts, self.directions_for(r, len(prompts))))
        if not self.opts["condition"]:
            return list(prompts)
        return [direction_prompt(p, v, self.objectives, self.opts["template"]) for p, v in self.items]

    def extend_groups(self, groups: Sequence[JudgedPrompt]) -> None:
        """Score every sample with the multi-objective reward (on the prompt without the direction);
        the group's scores are ``v . r``."""
        flat = [(g, text) for g in groups for _, text in g.flat()]
        if not flat:
            return
        r = self.rewards([self.items[g.index][0] for g, _ in flat], [text for _, text in flat])
        at = 0
        for g in groups:
            k = len(g.flat())
            v = torch.tensor(self.items[g.index][1], dtype=torch.float64)
            self.vectors[g.index] = r[at:at + k].tolist()
            g.scores = scalarize(r[at:at + k], v).tolist()
            at += k

    def rows(self, groups, r):
        train, info = [], []
        for g in groups:
            texts = [t for _, t in g.flat()]
            best = pick_best(g.scores, texts)
            base, v = self.items[g.index]
            record = {"round": r, "prompt_index": g.index, "prompt": base, "direction": v, "responses": texts,
                      "rewards": self.vectors[g.index], "values": g.scores, "objectives": self.objectives,
                      "selected": best}
            info.append(record)
            if best < 0:
                continue  # every sample empty: nothing to fine-tune on (recorded with selected = -1)
            train.append({"prompt": g.prompt, "completion": texts[best], "label": True,
                          **g.id_columns((best,), ("completion_ids",))})
        return train, info

    def round_metrics(self) -> Dict[str, Any]:
        kept = [self.vectors[i] for i in sorted(self.vectors)]
        return {"dpa/objectives": self.objectives,
                **{f"dpa/mean_{name}": sum(row[j] for group in kept for row in group) / max(sum(map(len, kept)), 1)
                   for j, name in enumerate(self.objectives)}}

    def end_round(self, r: int) -> None:
        self.vectors = {}
