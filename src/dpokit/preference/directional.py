"""Directions at generation time: DPA's arithmetic control of a direction-conditioned policy, and the
RPS comparison (Robust Preference Selection, arXiv 2510.20498) against conditioning on the user's direction.

* :func:`load_rewarder`: the multi-objective reward ``r(x, y) in R^m`` as a function ``(prompts,
  responses) -> [N, m]``: a reward model trained with ``dpokit train-rm --kind multi`` (a directory), or a
  Python function (``"module:function"`` / ``"file.py:function"``) returning one m-vector per response,
  checked (count, width, finite values).
* :func:`sample_at`: ``n`` samples per prompt from the policy with the direction ``v`` rendered into the
  prompt (:func:`dpokit.preference.multi_objective.direction_prompt`): the user picks the trade-off at
  generation time, no retraining. :func:`generate_at_direction` adds best-of-n under ``v . r``.
* :func:`rps_compare`: per prompt, with the same budget of ``k`` samples and the same reward, best-of-k at
  the user's direction ``v*`` against RPS (one sample at each of ``k`` directions evenly spaced over
  ``[theta* - delta, theta* + delta]``, selected by ``v* . r``). The sources read give neither ``k`` nor
  ``delta`` (METHODS-2: UNVERIFIED parameters, algorithm shape PARTIAL); they are the caller's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..sampling import HFSampler, SamplingConfig
from .judges import load_function
from .multi_objective import (DIRECTION_TEMPLATE, Rewarder, angle_direction, direction_prompt, neighbour_directions,
                              objectives_of, reward_vectors, scalarize, unit_direction)


def checked_rewards(fn: Callable, name: str, size: int) -> Rewarder:
    """``fn(prompts, responses)`` as a :data:`Rewarder` whose result is checked: one row of ``size``
    finite numbers per response (a ValueError naming ``name`` and the offending row otherwise)."""

    def rewards(prompts: Sequence[Any], responses: Sequence[Any]) -> torch.Tensor:
        rows = fn(list(prompts), list(responses))
        out = torch.as_tensor(rows.tolist() if isinstance(rows, torch.Tensor) else [list(map(float, r)) for r in rows],
                              dtype=torch.float64)
        if out.dim() != 2 or out.shape[0] != len(responses) or out.shape[1] != size:
            raise ValueError(f"rewards {name}: expected {len(responses)} rows of {size} objective values, got "
                             f"shape {tuple(out.shape)}")
        bad = (~torch.isfinite(out)).any(-1).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"rewards {name}: row {i} ({responses[i]!r}) has a non-finite value: {out[i].tolist()}")
        return out

    return rewards


def load_rewarder(reward_model: Optional[str] = None, rewards: Any = None, objectives: Optional[Sequence[str]] = None,
                  batch_size: int = 16, max_length: int = 1024, device: Any = None) -> Tuple[Rewarder, List[str]]:
    """``(rewarder, objective names)`` from exactly one of ``reward_model`` (a multi-objective reward
    model directory; its objectives are read from its config) and ``rewards`` (a callable or a
    ``"module:function"`` / ``"file.py:function"`` spec, with ``objectives`` naming its columns)."""
    if (reward_model is None) == (rewards is None):
        raise ValueError("give exactly one of reward_model (a multi-objective reward model directory) and rewards "
                         "(a function returning one vector of objective values per response)")
    if reward_model is not None:
        from .rm_io import load_reward_model

        model, tokenizer = load_reward_model(reward_model, num_labels=None)
        names = objectives_of(model)
        if objectives is not None and list(objectives) != names:
            raise ValueError(f"objectives {list(objectives)} differ from the reward model's {names} ({reward_model})")
        if device is not None:
            model = model.to(device)
        model.eval()
        return (lambda p, r: reward_vectors(model, tokenizer, p, r, batch_size, max_length).double()), names
    if not objectives:
        raise ValueError("rewards given as a function: name its objectives (one name per returned column)")
    fn = rewards if callable(rewards) else load_function(rewards)
    label = rewards if isinstance(rewards, str) else getattr(fn, "__name__", repr(fn))
    return checked_rewards(fn, label, len(objectives)), list(objectives)


def render(tokenizer, prompts: Sequence[Any]) -> Tuple[List[str], bool]:
    """Text prompts as they are; message lists through the tokenizer's chat template."""
    chat = [isinstance(p, list) for p in prompts]
    if any(chat) and not all(chat):
        raise ValueError("prompts mix plain text and message lists; use one form")
    if not any(chat):
        return list(prompts), False
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts], True


def sample_at(model, tokenizer, prompts: Sequence[Any], direction: Sequence[float], objectives: Sequence[str],
              n: int = 1, sampling: Optional[SamplingConfig] = None,
              template: str = DIRECTION_TEMPLATE) -> List[List[str]]:
    """``n`` samples per prompt from ``model`` conditioned on ``direction`` (texts [P][n])."""
    conditioned = [direction_prompt(p, direction, objectives, template) for p in prompts]
    rendered, templated = render(tokenizer, conditioned)
    config = sampling or SamplingConfig()
    if templated:
        config = SamplingConfig(**{**config.__dict__, "add_special_tokens": False})
    return HFSampler(model, tokenizer, config).sample(rendered, n)[0]


def generate_at_direction(model, tokenizer, prompts: Sequence[Any], direction: Sequence[float],
                          objectives: Sequence[str], n: int = 1, rewards: Optional[Rewarder] = None,
                          sampling: Optional[SamplingConfig] = None,
                          template: str = DIRECTION_TEMPLATE) -> List[Dict[str, Any]]:
    """One response per prompt at ``direction``: the first sample, or with ``rewards`` the best of ``n``
    by ``v . r`` (``value``; ``rewards`` holds every objective of the kept response)."""
    v = unit_direction(direction, len(objectives)).tolist()
    texts = sample_at(model, tokenizer, prompts, v, objectives, n, sampling, template)
    if rewards is None:
        return [{"prompt": p, "direction": v, "response": t[0]} for p, t in zip(prompts, texts)]
    return select(prompts, texts, rewards, v)


def neighbour_pool(model, tokenizer, prompts: Sequence[Any], theta_degrees: float, objectives: Sequence[str],
                   k: int, delta_degrees: float, sampling: Optional[SamplingConfig] = None,
                   template: str = DIRECTION_TEMPLATE) -> List[List[str]]:
    """RPS's candidates: per prompt, one sample at each of ``k`` directions evenly spaced over
    ``[theta - delta, theta + delta]`` (texts [P][k])."""
    base = sampling or SamplingConfig()
    pools: List[List[str]] = [[] for _ in prompts]
    for m, v in enumerate(neighbour_directions(theta_degrees, k, delta_degrees)):
        config = SamplingConfig(**{**base.__dict__, "seed": base.seed + 7919 * (m + 1)})
        for pool, texts in zip(pools, sample_at(model, tokenizer, prompts, v, objectives, 1, config, template)):
            pool.extend(texts)
    return pools


def select(prompts: Sequence[Any], candidates: Sequence[Sequence[str]], rewards: Rewarder,
           direction: Sequence[float]) -> List[Dict[str, Any]]:
    """Per prompt, the candidate with the largest ``v . r`` (ties: the first): response, value, rewards."""
    v = unit_direction(direction, len(direction))
    out = []
    for prompt, texts in zip(prompts, candidates):
        r = rewards([prompt] * len(texts), list(texts))
        values = scalarize(r, v)
        best = int(torch.argmax(values))
        out.append({"prompt": prompt, "direction": v.tolist(), "response": texts[best], "value": float(values[best]),
                    "rewards": r[best].tolist()})
    return out


def rps_compare(model, tokenizer, prompts: Sequence[Any], theta_degrees: float, rewards: Rewarder,
                objectives: Sequence[str], k: int = 5, delta_degrees: float = 10.0,
                sampling: Optional[SamplingConfig] = None, template: str = DIRECTION_TEMPLATE) -> Dict[str, Any]:
    """Best-of-k at ``v*`` (``direct``) vs RPS (``rps``) on each prompt, both selected by ``v* . r`` with
    the same ``k`` samples per prompt. Returns the per-prompt values, their means, the mean objective
    vectors of the kept responses, and RPS's win rate (ties count half)."""
    if len(objectives) != 2:
        raise ValueError(f"rps_compare works on two objectives (angles), got {len(objectives)}")
    target = angle_direction(theta_degrees)
    pools = {"direct": sample_at(model, tokenizer, prompts, target, objectives, k, sampling, template),
             "rps": neighbour_pool(model, tokenizer, prompts, theta_degrees, objectives, k, delta_degrees, sampling,
                                   template)}
    result: Dict[str, Any] = {"theta": theta_degrees, "k": k, "delta": delta_degrees}
    for name, candidates in pools.items():
        kept = select(prompts, candidates, rewards, target)
        values = [row["value"] for row in kept]
        result[f"{name}_values"] = values
        result[f"{name}_value"] = sum(values) / len(values)
        result[f"{name}_objectives"] = [sum(col) / len(col) for col in zip(*(row["rewards"] for row in kept))]
    wins = [1.0 if a > b else 0.5 if math.isclose(a, b, abs_tol=1e-12) else 0.0
            for a, b in zip(result["rps_values"], result["direct_values"])]
    result["rps_win_rate"] = sum(wins) / len(wins)
    return result


# ------------------------------------------------------------------------------------------------
# dpokit generate
# ------------------------------------------------------------------------------------------------
def _numbers(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--direction {text!r}: expected comma-separated numbers, e.g. 0.8,0.6") from None


def cmd_generate(args) -> int:
    """``dpokit generate``: responses of a direction-conditioned policy at a direction given now."""
    import json
    import sys

    from transformers import AutoModelForCausalLM

    from ..data.prompts import load_prompts
    from ..errors import ConfigError
    from ..models import load_tokenizer

    try:
        direction = _numbers(args.direction)
        objectives = args.objectives.split(",") if args.objectives else None
        rewards = None
        if args.reward_model or args.rewards:
            rewards, objectives = load_rewarder(args.reward_model, args.rewards, objectives)
        if not objectives:
            raise ValueError("--objectives: name the objectives the direction weighs (or give --reward-model)")
        unit_direction(direction, len(objectives))
        if (args.samples > 1 or args.rps) and rewards is None:
            raise ValueError("--samples > 1 and --rps select by v . r: give --reward-model or --rewards")
        if args.rps and len(objectives) != 2:
            raise ValueError("--rps takes directions by angle: it needs two objectives")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    prompts = load_prompts(args.prompts)
    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True)
    tokenizer = load_tokenizer(args.model)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                              top_k=0 if args.temperature > 0 else None)
    if args.rps:
        theta = math.degrees(math.atan2(direction[1], direction[0]))
        pools = neighbour_pool(model, tokenizer, prompts, theta, objectives, args.rps, args.rps_delta, sampling)
        rows = select(prompts, pools, rewards, direction)
    else:
        rows = generate_at_direction(model, tokenizer, prompts, direction, objectives, args.samples, rewards, sampling)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps({**row, "objectives": list(objectives)}) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="sample a direction-conditioned policy at a direction (DPA), optionally "
                       "best-of-n or RPS by v . r")
    p.add_argument("--model", required=True, help="a causal LM directory (e.g. the final/ of a dpa_rsf run)")
    p.add_argument("--prompts", required=True, help="a JSONL file (or data set) with a prompt column")
    p.add_argument("--direction", required=True, help="the direction v, comma-separated (normalized), e.g. 0.8,0.6")
    p.add_argument("--objectives", default=None, help="objective names, comma-separated (default: the reward model's)")
    p.add_argument("--samples", type=int, default=1, help="n samples per prompt; > 1 keeps the best by v . r")
    p.add_argument("--reward-model", default=None, help="a multi-objective reward model (train-rm --kind multi)")
    p.add_argument("--rewards", default=None, help="or a function 'module:function' returning one vector per response")
    p.add_argument("--rps", type=int, default=0, metavar="K",
                   help="RPS: one sample at each of K neighbouring directions, the best by v . r")
    p.add_argument("--rps-delta", type=float, default=10.0, help="RPS neighbourhood radius in degrees")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSONL output (default: stdout)")
    p.set_defaults(func=cmd_generate)
