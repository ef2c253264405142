"""Online and iterative preference optimization: generate -> judge -> build pairs -> train, in rounds.

    for round r in 0 .. online.rounds - 1:
        prompts  <- this round's slice of the prompt pool (seeded order; rounds see new prompts first)
        samples  <- the sampler model(s) answer each prompt K times                 rounds/round-r/samples.jsonl
        scores   <- the judge scores them (pointwise) or compares them (pairwise)   rounds/round-r/scores.jsonl
        pairs    <- the strategy turns judged samples into training examples        rounds/round-r/{pairs,lists,train}.jsonl
        train    <- the regular Trainer (one run per round; the strategy picks      rounds/round-r/train/
                    the loss, the reference and any extra inputs)
        evaluate <- judge score of fresh policy samples on online.eval_prompts and  rounds/round-r/metrics.json
                    an optional Python hook                                         rounds.jsonl (one line per round)
        the strategy's end-of-round step (e.g. APO's extrapolation)
    the last round's policy (for APO: the last un-extrapolated iterate) -> final/

A round strategy is a registered class (:data:`STRATEGIES`) that says which reference the round
trains against (the frozen initial model, or the policy the round starts from), which models sample,
how judged samples become examples, and which loss reads them. The loop knows no method by name.

Crash safety: samples and scores are appended to their files (flushed and fsynced) as each chunk is
produced; a resumed run (``dpokit train --resume``) reuses them, so nothing already judged is judged
again, resumes the round's training from its latest checkpoint, and skips finished rounds (each
ends with a ``DONE`` marker and the policy's trainable weights in ``policy.safetensors``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import Config, ConfigError, OnlineConfig, build_loss
from ..eval.generation import SamplingConfig, make_sampler
from ..judges import JUDGES, PairwiseJudge, PointwiseJudge, build_judge, judge_group, pair_probability
from ..reference import AdapterDisabledReference, ModelReference
from . import checkpoint as ckpt

logger = logging.getLogger("dpokit")

SOURCES = ("policy", "reference", "teacher")  # order of a prompt's responses in scores and lists


# ------------------------------------------------------------------------------------------------
# Small file helpers: append-only JSONL that survives a crash mid-write
# ------------------------------------------------------------------------------------------------
def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    if not rows:
        return
    text = "".join(json.dumps(row) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str) -> List[dict]:
    """Rows of a JSONL file; a torn last line (a crash mid-write) is dropped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def load_prompts(source: Any) -> List[Any]:
    """Distinct prompts of a file or dataset, in order: the ``prompt`` column, or the prompt of
    preference pairs (implicit prompts are split off as for training)."""
    from ..data.formats import DataError, iter_records, parse_pair

    prompts, seen = [], set()
    for location, record in iter_records(source):
        if record.get("prompt") not in (None, ""):
            prompt = record["prompt"]
        elif "chosen" in record and "rejected" in record:
            prompt = parse_pair(location, record).prompt
        else:
            raise DataError(location, "prompt", "is missing", "online prompts need a 'prompt' column (or pairs)")
        if _key(prompt) not in seen:
            seen.add(_key(prompt))
            prompts.append(prompt)
    if not prompts:
        raise DataError(str(source), None, "contains no prompts")
    return prompts


# ------------------------------------------------------------------------------------------------
# Judged samples of one prompt
# ------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One prompt of a round with its responses by source, and (after judging) scores over
    :meth:`flat` order and the pairwise win matrix ``win[i][j] = P(y_i > y_j)``."""

    index: int
    prompt: Any
    responses: Dict[str, List[str]] = field(default_factory=dict)
    num_tokens: Dict[str, List[int]] = field(default_factory=dict)
    scores: Optional[List[float]] = None
    win: Optional[List[List[float]]] = None

    def flat(self) -> List[Tuple[str, str]]:
        return [(source, text) for source in SOURCES for text in self.responses.get(source, [])]

    def positions(self, source: str) -> List[int]:
        return [i for i, (s, _) in enumerate(self.flat()) if s == source]


def select_pairs(responses: Sequence[Any], scores: Sequence[float], mode: str = "best_vs_worst",
                 min_margin: float = 0.0) -> List[Tuple[int, int]]:
    """Index pairs ``(chosen, rejected)`` from scored responses, as the ranked-list pair builders
    (:func:`dpokit.data.build.pairs_from_list`) build them: tied or identical responses are never paired."""
    from ..data.build import pairs_from_list
    from ..data.formats import RankedList

    usable = [i for i, text in enumerate(responses) if not _empty(text)]  # the data layer refuses empty completions
    if len(usable) < 2:
        return []
    pairs = pairs_from_list(RankedList(None, [responses[i] for i in usable], [float(scores[i]) for i in usable]),
                            mode, min_margin)
    first = {}
    for i in usable:
        first.setdefault(_key(responses[i]), i)
    return [(first[_key(p.chosen)], first[_key(p.rejected)]) for p in pairs]


def _empty(text: Any) -> bool:
    return not text.strip() if isinstance(text, str) else not text


# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------
STRATEGIES: Dict[str, type] = {}


def register_strategy(name: str):
    def decorator(cls):
        if name in STRATEGIES:
            raise ValueError(f"round strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorator


class RoundStrategy:
    """What one online method changes in a round. Subclasses override the hooks they need.

    * ``reference``: ``"initial"`` (the frozen starting model, or ``reference.path``),
      ``"previous"`` (a frozen copy of the policy the round starts from) or ``"base"`` (the
      policy with its LoRA modules switched off).
    * ``sources``: which models answer the prompts (``policy``, ``reference``).
    * ``offline_pairs``: trains on ``data.train``'s pairs (plus online samples) instead of a prompt pool.
    * ``refreshable``: supports ``online.refresh_every`` (fresh pairs within a round).
    * ``OPTIONS``: the strategy's hyperparameters (``online.options``) with their defaults.
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = "previous"
    sources: ClassVar[Tuple[str, ...]] = ("policy",)
    needs_judge: ClassVar[bool] = True
    offline_pairs: ClassVar[bool] = False
    refreshable: ClassVar[bool] = True
    min_samples: ClassVar[int] = 2  # samples per prompt needed to compare the policy's own answers
    verified: ClassVar[str] = "verified"
    source: ClassVar[str] = ""
    OPTIONS: ClassVar[Dict[str, Any]] = {}
    BASE_OPTIONS: ClassVar[Dict[str, Any]] = {"missing_eos_penalty": 0.0}

    def __init__(self, loop: "OnlineLoop", options: Dict[str, Any]):
        self.loop = loop
        self.opts = {**self.BASE_OPTIONS, **self.OPTIONS, **check_options(type(self), options)}

    @classmethod
    def option_names(cls) -> List[str]:
        return sorted({**cls.BASE_OPTIONS, **cls.OPTIONS})

    @classmethod
    def loss_section(cls, base: Dict[str, Any], options: Dict[str, Any]) -> Dict[str, Any]:
        """The loss section each round trains with (default: ``loss`` as configured)."""
        return dict(base)

    # -- hooks, in round order ----------------------------------------------------------------
    def setup(self) -> None:
        """Before anything runs or is restored (e.g. add LoRA modules to the policy)."""

    def restore(self, last_done: int) -> None:
        """On resume: the policy holds the weights saved at the end of round ``last_done``."""
        self.end_round(last_done)

    def round_prompts(self, r: int) -> List[Any]:
        return self.loop.default_round_prompts(r)

    def samples_per_prompt(self, source: str) -> int:
        return self.loop.online.samples_per_prompt

    def extend_groups(self, groups: Sequence[Group]) -> None:
        """Add responses that are not sampled (e.g. a teacher's) before judging."""

    @contextlib.contextmanager
    def sampler_model(self, source: str) -> Iterator[torch.nn.Module]:
        if source == "reference":
            with self.loop.frozen_reference().active() as model:
                yield model
        else:
            yield self.loop.policy

    def effective_scores(self, group: Group) -> List[float]:
        """Judge scores, minus ``missing_eos_penalty`` for responses cut at ``max_new_tokens``."""
        penalty = self.opts["missing_eos_penalty"]
        if not penalty:
            return list(group.scores)
        limit = self.loop.online.max_new_tokens
        lengths = [n for source in SOURCES for n in group.num_tokens.get(source, [])]
        return [s - penalty if n >= limit else s for s, n in zip(group.scores, lengths)]

    def rows(self, groups: Sequence[Group], r: int) -> Tuple[List[dict], List[dict]]:
        """``(training rows, pair records with provenance)``: by default pairs of the policy's
        own samples (plus any other source) built with ``online.pairs`` and ``online.min_margin``."""
        train, info = [], []
        for group in groups:
            flat = group.flat()
            scores = self.effective_scores(group)
            for i, j in select_pairs([t for _, t in flat], scores, self.loop.online.pairs,
                                     self.loop.online.min_margin):
                train.append({"prompt": group.prompt, "chosen": flat[i][1], "rejected": flat[j][1]})
                info.append(_info(group, r, i, j, scores))
        return train, info

    def callbacks(self) -> List[Callable]:
        return []

    def prepare_trainer(self, trainer, train_rows: List[dict], groups: Sequence[Group]) -> None:
        """After the round's Trainer is built, before it trains."""

    def after_train(self, trainer) -> None:
        pass

    def end_round(self, r: int) -> None:
        """After the round is trained and evaluated (the policy is the round's result)."""

    def final_policy(self) -> torch.nn.Module:
        return self.loop.policy


def check_options(cls, options: Dict[str, Any]) -> Dict[str, Any]:
    valid = cls.option_names()
    unknown = sorted(set(options or {}) - set(valid))
    if unknown:
        raise ConfigError(f"online.options: strategy {cls.name!r} has no option(s) {unknown}; "
                          f"it accepts {valid or 'none'}")
    return dict(options or {})


def _info(group: Group, r: int, i: int, j: int, scores: Sequence[float], **extra) -> dict:
    flat = group.flat()
    return {"round": r, "prompt_index": group.index, "prompt": group.prompt, "chosen": flat[i][1],
            "rejected": flat[j][1], "chosen_source": flat[i][0], "rejected_source": flat[j][0],
            "chosen_score": scores[i], "rejected_score": scores[j], **extra}


@register_strategy("online_dpo")
class OnlineDPO(RoundStrategy):
    """Online DPO / OAIF (Guo et al. 2024, arXiv 2402.04792; TRL OnlineDPOTrainer): fresh pairs from
    the current policy every round (``online.refresh_every``: every N steps), judged, trained against
    the frozen initial model. ``missing_eos_penalty`` is subtracted from the score of a response cut
    at ``max_new_tokens`` (TRL's option)."""

    reference = "initial"
    source = "Guo et al. 2024, arXiv 2402.04792 (METHODS G1)"


@register_strategy("iterative_dpo")
class IterativeDPO(RoundStrategy):
    """Iterative DPO: each round trains on pairs sampled from the round's starting policy, with that
    policy as the reference (self-rewarding / iterative-RPO style loops)."""

    reference = "previous"
    source = "iterative DPO with the previous iterate as reference (METHODS G6/A10 practice)"


@register_strategy("dno")
class DNO(RoundStrategy):
    """DNO-Prct (Rosset et al. 2024, arXiv 2404.03715, Algorithm 2): K samples per prompt from the
    previous iterate plus an optional teacher response, every large-margin pair kept, DPO with the
    previous iterate as reference, a share of older rounds' pairs replayed.

    Options: ``teacher`` (JSONL with ``prompt`` and ``response``), ``min_chosen_score`` (the paper:
    positives score >= 5 of 6), ``min_margin`` (paper: 2; default ``online.min_margin``),
    ``student_min_margin`` (paper: 1, when the positive is a policy sample), ``replay`` (paper:
    0.3 of round t-1, 0.15 of t-2, halving; a fraction of this round's pair count)."""

    reference = "previous"
    min_samples = 1
    source = "Rosset et al. 2024, arXiv 2404.03715, Alg. 2 (METHODS addendum 5)"
    OPTIONS = {"teacher": None, "min_chosen_score": None, "min_margin": None, "student_min_margin": None,
               "replay": 0.0}

    def __init__(self, loop, options):
        super().__init__(loop, options)
        self.teacher: Dict[str, str] = {}
        if self.opts["teacher"]:
            from ..data.formats import iter_records

            for _, record in iter_records(self.opts["teacher"]):
                response = record.get("response", record.get("chosen"))
                if "prompt" not in record or response is None:
                    raise ConfigError("online.options.teacher: records need 'prompt' and 'response'")
                self.teacher[_key(record["prompt"])] = response

    def _margin(self, positive_source: str) -> float:
        base = self.opts["min_margin"] if self.opts["min_margin"] is not None else self.loop.online.min_margin
        if positive_source == "policy" and self.opts["student_min_margin"] is not None:
            return self.opts["student_min_margin"]
        return base

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            answer = self.teacher.get(_key(group.prompt))
            flat = group.flat()
            scores = self.effective_scores(group)
            seen = set()
            for i, j in select_pairs([t for _, t in flat], scores, "all_pairs", 0.0):
                if self.opts["min_chosen_score"] is not None and scores[i] < self.opts["min_chosen_score"]:
                    continue
                if scores[i] - scores[j] < self._margin(flat[i][0]):
                    continue
                if (i, j) in seen:
                    continue
                seen.add((i, j))
                train.append({"prompt": group.prompt, "chosen": flat[i][1], "rejected": flat[j][1]})
                info.append(_info(group, r, i, j, scores, teacher=answer is not None))
        replay = self.opts["replay"]
        if replay and r > 0:
            rng = random.Random(self.loop.config.train.seed * 1000 + r)
            own = len(train)
            for back in range(1, r + 1):
                share = replay * 0.5 ** (back - 1)
                count = int(share * own)
                if count < 1:
                    break
                older = [row for row in read_jsonl(os.path.join(self.loop.round_dir(r - back), "pairs.jsonl"))
                         if row.get("round") == r - back]
                for row in rng.sample(older, min(count, len(older))):
                    train.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
                    info.append({**row, "replayed_in": r})
        return train, info

    def extend_groups(self, groups: Sequence[Group]) -> None:
        for group in groups:
            answer = self.teacher.get(_key(group.prompt))
            if answer is not None:
                group.responses["teacher"] = [answer]
                group.num_tokens["teacher"] = [0]


@register_strategy("sppo")
class SPPO(RoundStrategy):
    """SPPO (Wu et al. 2024, arXiv 2405.00675): K samples per prompt from the previous iterate; each
    response's win rate against the group, ``P_i = mean_j P(y_i > y_j)`` (itself included at 0.5, as
    the official pipeline averages PairRM's K x K matrix); the highest and lowest win rates form the
    pair, trained with the ``sppo`` loss reading ``win_prob_chosen``/``win_prob_rejected``, reference
    = previous iterate. With a pointwise judge ``P(y_i > y_j)`` is ``sig(scale (s_i - s_j))``
    (``win_prob: bradley_terry``) or 1 / 0.5 / 0 (``win_prob: hard``)."""

    reference = "previous"
    source = "Wu et al. 2024, arXiv 2405.00675 (METHODS A10)"
    OPTIONS = {"win_prob": "bradley_terry", "scale": 1.0}

    @classmethod
    def loss_section(cls, base, options):
        from ..losses import resolve_name

        if resolve_name(base.get("name", "dpo")) in ("sppo", "sppo_hard"):
            return dict(base)
        section = {"name": "sppo"}
        if "beta" in base:
            section["beta"] = base["beta"]
        return section

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            flat = group.flat()
            rates = [sum(row) / len(row) for row in group.win]
            for i, j in select_pairs([t for _, t in flat], rates, "best_vs_worst", self.loop.online.min_margin):
                train.append({"prompt": group.prompt, "chosen": flat[i][1], "rejected": flat[j][1],
                              "win_prob_chosen": rates[i], "win_prob_rejected": rates[j]})
                info.append(_info(group, r, i, j, group.scores, win_prob_chosen=rates[i],
                                  win_prob_rejected=rates[j]))
        return train, info


@register_strategy("apo")
class APO(RoundStrategy):
    """APO, accelerated preference optimization (He et al. 2024, arXiv 2410.06293, Alg. 1 and Sec. 5.2):
    iterative DPO whose next round starts from the parameter-space extrapolation
    ``theta <- theta_hat + alpha (theta_hat - theta_hat_prev)`` of the two last un-extrapolated
    iterates; the extrapolated model is the next round's sampler, reference and starting point; the
    output is the last un-extrapolated iterate. ``alpha`` 0.3 (App. F.1); 0 is iterative DPO."""

    reference = "previous"
    source = "He et al. 2024, arXiv 2410.06293 (METHODS addendum 4)"
    OPTIONS = {"alpha": 0.3}

    def setup(self):
        self.previous = self._snapshot()  # theta_hat_0 = the starting model
        self.latest: Optional[Dict[str, torch.Tensor]] = None

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in ckpt.trainable_state(self.loop.policy).items()}

    def restore(self, last_done):
        prev_path = self.loop.policy_file(last_done - 1) if last_done > 0 else None
        if prev_path is not None:
            self.previous = load_file(prev_path)
        self.end_round(last_done)

    def end_round(self, r):
        theta_hat = self._snapshot()
        self.latest = theta_hat
        if r < self.loop.online.rounds - 1:
            alpha = float(self.opts["alpha"])
            params = dict(self.loop.policy.named_parameters())
            with torch.no_grad():
                for name, value in theta_hat.items():
                    target = params[name]
                    moved = value + alpha * (value - self.previous[name])
                    target.copy_(moved.to(target.device, target.dtype))
        self.previous = theta_hat

    def final_policy(self):
        if self.latest is not None:
            params = dict(self.loop.policy.named_parameters())
            with torch.no_grad():
                for name, value in self.latest.items():
                    params[name].copy_(value.to(params[name].device, params[name].dtype))
        return self.loop.policy


@register_strategy("xpo")
class XPO(RoundStrategy):
    """XPO (Xie et al. 2024, arXiv 2405.21046; TRL XPOTrainer): per prompt, K samples from the policy
    and K from the frozen reference; pair i is (policy sample i, reference sample i) ordered by the
    judge (ties dropped unless ``keep_ties``, then the policy sample is chosen); the ``xpo`` loss
    adds ``alpha * lp(y_ref)`` (``alpha`` default 1e-5, TRL) to DPO (or IPO when ``loss.name`` is ipo)."""

    reference = "initial"
    sources = ("policy", "reference")
    min_samples = 1
    source = "Xie et al. 2024, arXiv 2405.21046 (METHODS G3)"
    OPTIONS = {"alpha": 1e-5, "keep_ties": False}

    @classmethod
    def loss_section(cls, base, options):
        from ..losses import resolve_name

        name = resolve_name(base.get("name", "dpo"))
        if name == "xpo":
            return dict(base)
        if name not in ("dpo", "ipo"):
            raise ConfigError(f"online.strategy xpo trains with loss dpo or ipo (plus its exploration term), "
                              f"not {name!r}")
        section = {"name": "xpo", "loss_type": "sigmoid" if name == "dpo" else "ipo",
                   "alpha": float(options.get("alpha", cls.OPTIONS["alpha"]))}
        if "beta" in base:
            section["beta"] = base["beta"]
        return section

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            flat = group.flat()
            scores = self.effective_scores(group)
            for i, j in zip(group.positions("policy"), group.positions("reference")):
                if flat[i][1] == flat[j][1] or _empty(flat[i][1]) or _empty(flat[j][1]) \
                        or (scores[i] == scores[j] and not self.opts["keep_ties"]):
                    continue
                chosen, rejected = (i, j) if scores[i] >= scores[j] else (j, i)
                train.append({"prompt": group.prompt, "chosen": flat[chosen][1], "rejected": flat[rejected][1],
                              "ref_is_chosen": 1.0 if chosen == j else 0.0})
                info.append(_info(group, r, chosen, rejected, scores))
        return train, info


@register_strategy("hypo")
class HyPO(RoundStrategy):
    """HyPO (PARTIAL; Song et al. 2024, arXiv 2406.01462): the offline pairs of ``data.train`` plus a
    reverse-KL penalty to the frozen initial model estimated on ``k`` unlabeled samples of each
    pair's prompt from the round's policy (RLOO baseline; the ``hypo`` loss, ``lam``). No judge.
    Unverified: the estimator's exact form, ``lam`` and ``k`` (defaults here are placeholders), and
    the samples come from the round's starting policy, not from every step's policy."""

    reference = "initial"
    needs_judge = False
    offline_pairs = True
    refreshable = False
    min_samples = 1
    verified = "partial"
    source = "Song et al. 2024, arXiv 2406.01462 (METHODS G4, addendum 7)"
    OPTIONS = {"lam": 0.05, "k": None}

    @classmethod
    def loss_section(cls, base, options):
        section = {"name": "hypo", "lam": float(options.get("lam", cls.OPTIONS["lam"]))}
        if "beta" in base:
            section["beta"] = base["beta"]
        return section

    def setup(self):
        from ..data import load_examples

        d = self.loop.config.data
        self.pairs = load_examples(d.train, "pairs", d.split, d.limit, d.on_bad_content)

    def samples_per_prompt(self, source):
        return int(self.opts["k"] or self.loop.online.samples_per_prompt)

    def round_prompts(self, r):
        n = self.loop.online.prompts_per_round or len(self.pairs)
        order = list(range(len(self.pairs)))
        random.Random(self.loop.config.train.seed).shuffle(order)
        start = (r * n) % len(order)
        self.round_pairs = [self.pairs[order[(start + i) % len(order)]] for i in range(min(n, len(order)))]
        prompts, self.side_of = [], []
        index: Dict[str, int] = {}
        for pair in self.round_pairs:
            key = _key(pair.prompt)
            if key not in index:
                index[key] = len(prompts)
                prompts.append(pair.prompt)
            self.side_of.append(index[key])
        return prompts

    def rows(self, groups, r):
        train = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras,
                  "side_id": float(side)} for p, side in zip(self.round_pairs, self.side_of)]
        info = [{"round": r, "prompt_index": side, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                 "online_samples": groups[side].responses.get("policy", [])}
                for p, side in zip(self.round_pairs, self.side_of)]
        return train, info

    def prepare_trainer(self, trainer, train_rows, groups):
        from ..data import UnpairedExample, tokenize_examples

        d = self.loop.config.data
        side: Dict[int, tuple] = {}
        for group in groups:
            samples = [t for t in group.responses.get("policy", []) if t.strip()]
            if not samples:
                continue
            examples = [UnpairedExample(group.prompt, text, True, {}, f"round sample {group.index}") for text in samples]
            tokenized, _ = tokenize_examples(examples, self.loop.tokenizer, d.max_length, d.max_prompt_length,
                                             d.truncation_mode, d.append_eos, "skip")
            if tokenized:
                side[group.index] = (tokenized[0].prompt_ids, [ex.completions[0] for ex in tokenized])
        trainer.engine = SideRowsEngine(trainer.engine, side)


@register_strategy("ofs_dpo")
class OFSDPO(RoundStrategy):
    """OFS-DPO (PARTIAL; Qi et al. 2024, arXiv 2406.05534): two LoRA modules on the policy, fast
    (learning rate ``lr``) and slow (``lr * slow_ratio``), both trained every step with the ``ofs_dpo``
    loss (DPO against the base model plus the chasing term, ``alpha``); every ``chasing_interval``
    steps the module with the lower running DPO loss takes the fast role. Pairs are online DPO's
    (fresh each round, sampled by the fast module). The output is the fast module merged.
    Unverified: ``alpha``, ``slow_ratio`` and ``chasing_interval``."""

    reference = "base"
    refreshable = False
    verified = "partial"
    source = "Qi et al. 2024, arXiv 2406.05534 (METHODS G2, addendum 12)"
    OPTIONS = {"alpha": 0.1, "slow_ratio": 0.5, "chasing_interval": 10, "ema": 0.9}
    MODULES = ("fast", "slow")

    @classmethod
    def loss_section(cls, base, options):
        section = {"name": "ofs_dpo", "alpha": float(options.get("alpha", cls.OPTIONS["alpha"])),
                   "ema": float(options.get("ema", cls.OPTIONS["ema"]))}
        if "beta" in base:
            section["beta"] = base["beta"]
        return section

    def setup(self):
        from peft import LoraConfig, get_peft_model

        lora = self.loop.config.lora
        settings = dict(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
        policy = self.loop.policy
        if hasattr(policy, "peft_config"):
            raise ConfigError("online.strategy ofs_dpo adds its own two LoRA modules; set lora.enabled: false "
                              "(lora.r, lora.alpha, ... still set their shape)")
        policy = get_peft_model(policy, LoraConfig(**settings), adapter_name=self.MODULES[0])
        policy.add_adapter(self.MODULES[1], LoraConfig(**settings))
        for name, param in policy.named_parameters():
            param.requires_grad_("lora_" in name)
        self.loop.policy = policy
        self.loss_state: Dict[str, Any] = {}

    def restore(self, last_done):
        path = os.path.join(self.loop.round_dir(last_done), "metrics.json")
        if os.path.exists(path):
            with open(path) as handle:
                self.loss_state = json.load(handle).get("ofs_loss_state", {})

    def fast_module(self) -> str:
        return self.MODULES[int(self.loss_state.get("fast", 0))]

    @contextlib.contextmanager
    def sampler_model(self, source):
        with active_adapter(self.loop.policy, self.fast_module()):
            yield self.loop.policy

    def _loss(self, trainer):
        return getattr(trainer.loss_fn, "_instance", None)

    def prepare_trainer(self, trainer, train_rows, groups):
        loss = self._loss(trainer)
        if loss is None or not hasattr(loss, "maybe_swap"):
            raise ConfigError("online.strategy ofs_dpo needs the plain ofs_dpo loss (no modifiers)")
        loss.load_state_dict(self.loss_state)
        trainer.engine = TwoModuleEngine(trainer.engine, *self.MODULES)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        slow_ids = {id(p) for n, p in policy.named_parameters() if f".{self.MODULES[1]}." in n and p.requires_grad}
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        group = optimizer.param_groups[0]
        slow = [p for p in group["params"] if id(p) in slow_ids]
        group["params"] = [p for p in group["params"] if id(p) not in slow_ids]
        optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": slow})
        scheduler = trainer.scheduler
        if not hasattr(scheduler, "lr_lambdas"):
            raise ConfigError("online.strategy ofs_dpo needs a LambdaLR-based scheduler (cosine, linear, constant)")
        scheduler.base_lrs = [scheduler.base_lrs[0]] * 2
        scheduler.lr_lambdas = [scheduler.lr_lambdas[0]] * 2
        self._apply_roles(trainer, loss.fast)

    def _apply_roles(self, trainer, fast: int) -> None:
        lr, ratio = self.loop.config.train.lr, float(self.opts["slow_ratio"])
        scheduler = trainer.scheduler
        scheduler.base_lrs = [lr if i == fast else lr * ratio for i in (0, 1)]
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(max(scheduler.last_epoch, 0))

    def callbacks(self):
        interval = int(self.opts["chasing_interval"])

        def swap(trainer, step):
            loss = self._loss(trainer)
            if interval and step % interval == 0 and loss.maybe_swap():
                self._apply_roles(trainer, loss.fast)

        return [swap]

    def after_train(self, trainer):
        self.loss_state = self._loss(trainer).state_dict()

    def round_metrics(self) -> Dict[str, Any]:
        return {"ofs_loss_state": self.loss_state, "ofs_fast_module": self.fast_module()}

    def final_policy(self):
        merged = copy.deepcopy(self.loop.policy)
        merged.set_adapter(self.fast_module())
        merged.delete_adapter(self.MODULES[1 - int(self.loss_state.get("fast", 0))])
        return merged


# ------------------------------------------------------------------------------------------------
# Engine wrappers for strategies whose loss needs more than the pair's own log-probs
# ------------------------------------------------------------------------------------------------
class SideRowsEngine:
    """Adds log-probs of extra completions per example ("side rows", keyed by the example's
    ``side_id`` extra) to ``LossInputs.extras``: ``side_policy_logps`` (with gradient),
    ``side_reference_logps`` and ``side_mask`` [B, K]."""

    def __init__(self, engine, rows: Dict[int, tuple]):
        self.engine = engine
        self.rows = rows

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        from ..data.collate import Batch

        inputs = self.engine.loss_inputs(policy, batch, reference)
        ids = [int(i) for i in batch.extras["side_id"].tolist()]
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise ValueError(f"no online samples for side_id {missing[0]}")
        groups = [self.rows[i] for i in ids]
        sizes = [len(completions) for _, completions in groups]
        lp = self.engine.token_logprobs(policy, groups)
        ref = reference.token_logprobs(self.engine, Batch("lists", groups, batch.index), cache=False)
        device = inputs.policy_chosen_logps.device
        width = max(sizes)
        mask = torch.arange(width, device=device).unsqueeze(0) < torch.tensor(sizes, device=device).unsqueeze(1)
        policy_logps = lp.sums.new_zeros(len(groups), width).masked_scatter(mask, lp.sums)
        reference_logps = ref.sums.new_zeros(len(groups), width).masked_scatter(mask, ref.sums.to(device))
        inputs.extras.update(side_policy_logps=policy_logps, side_reference_logps=reference_logps,
                             side_mask=mask.to(policy_logps.dtype))
        return inputs


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run ``model`` (PEFT) with only LoRA module ``name`` active. ``requires_grad`` is left as it is,
    and restored on exit: PEFT's ``disable_adapter()`` (the reference forward) re-activates adapters
    on exit through ``set_adapter``, which freezes every module it does not activate."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [m._active_adapter for m in layers]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for m in layers:
        m._active_adapter = [name]
    try:
        yield model
    finally:
        for m, value in zip(layers, saved):
            m._active_adapter = value
        for p, flag in flags:
            p.requires_grad_(flag)


class TwoModuleEngine:
    """OFS-DPO: the pair's log-probs under LoRA module ``first`` fill the usual fields; module
    ``second``'s (with gradient) go to ``extras["ofs_other_chosen_logps"/"ofs_other_rejected_logps"]``."""

    def __init__(self, engine, first: str, second: str):
        self.engine, self.first, self.second = engine, first, second

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        with active_adapter(policy, self.first):
            inputs = self.engine.loss_inputs(policy, batch, reference)
        with active_adapter(policy, self.second):
            sums = self.engine.token_logprobs(policy, batch.groups).sums
        inputs.extras.update(ofs_other_chosen_logps=sums[0::2], ofs_other_rejected_logps=sums[1::2])
        return inputs


# ------------------------------------------------------------------------------------------------
# Validation (called from dpokit.config.validate when online.strategy is set)
# ------------------------------------------------------------------------------------------------
SAMPLERS = ("hf", "vllm")
PAIR_MODES = ("best_vs_worst", "best_vs_each", "all_pairs")


def validate_online(config: Config) -> None:
    o = config.online
    cls = STRATEGIES.get(o.strategy)
    if cls is None:
        raise ConfigError(f"online.strategy: {o.strategy!r} is not one of {', '.join(sorted(STRATEGIES))}")
    for path, value, low in (("online.rounds", o.rounds, 1), ("online.generation_batch_size", o.generation_batch_size, 1),
                             ("online.max_new_tokens", o.max_new_tokens, 1),
                             ("online.eval_samples_per_prompt", o.eval_samples_per_prompt, 1),
                             ("online.samples_per_prompt", o.samples_per_prompt, cls.min_samples),
                             ("online.refresh_every", o.refresh_every, 0)):
        if value < low:
            raise ConfigError(f"{path}: must be >= {low} for strategy {o.strategy!r}, got {value}")
    if o.prompts_per_round is not None and o.prompts_per_round < 1:
        raise ConfigError(f"online.prompts_per_round: must be >= 1, got {o.prompts_per_round}")
    if o.sampler not in SAMPLERS:
        raise ConfigError(f"online.sampler: {o.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if o.pairs not in PAIR_MODES:
        raise ConfigError(f"online.pairs: {o.pairs!r} is not one of {', '.join(PAIR_MODES)}")
    if o.temperature < 0 or not 0.0 < o.top_p <= 1.0:
        raise ConfigError("online.temperature must be >= 0 and online.top_p in (0, 1]")
    if o.min_margin < 0:
        raise ConfigError(f"online.min_margin: must be >= 0, got {o.min_margin}")
    check_options(cls, o.options)
    if cls.needs_judge:
        spec = o.judge
        if spec is None:
            raise ConfigError(f"online.judge: strategy {o.strategy!r} needs a judge, e.g. "
                              "{kind: callable, function: 'module:function'} or {kind: reward_model, path: ...}")
        if isinstance(spec, dict) and spec.get("kind") not in JUDGES:
            raise ConfigError(f"online.judge.kind: {spec.get('kind')!r} is not one of {', '.join(sorted(JUDGES))}")
        if not isinstance(spec, (dict, str)):
            raise ConfigError("online.judge: expected a mapping with 'kind' (or 'module:function')")
    if cls.offline_pairs and not config.data.train:
        raise ConfigError(f"online.strategy {o.strategy!r} trains on the offline pairs of data.train; set data.train")
    if o.refresh_every and cls.reference != "initial":
        raise ConfigError(f"online.refresh_every: refreshing pairs within a round needs a frozen reference; "
                          f"strategy {o.strategy!r} uses the previous iterate (use more rounds instead)")
    if o.refresh_every and not cls.refreshable:
        raise ConfigError(f"online.refresh_every is not available with strategy {o.strategy!r}")
    if config.reference.precompute:
        raise ConfigError("reference.precompute: online rounds score new samples each round, so reference "
                          "log-probs cannot be cached; remove it")
    section = cls.loss_section(config.loss, o.options)
    try:
        loss = build_loss(section)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"loss (strategy {o.strategy!r}): {err.args[0] if err.args else err}") from None
    if loss.needs.data != "pairs":
        raise ConfigError(f"online rounds build preference pairs; loss {loss.name!r} trains on {loss.needs.data}")


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
class OnlineLoop:
    """Runs ``config.online.rounds`` rounds of the configured strategy; see the module docstring.

    Python API: ``OnlineLoop(config, model=None, tokenizer=None, judge=None, prompts=None,
    eval_prompts=None, eval_hook=None).run(resume=False)``; ``judge`` may be any judge object
    (:mod:`dpokit.judges`) or a callable ``(prompt, response) -> score``; ``eval_hook(policy, round)``
    returns extra metrics for the round.
    """

    def __init__(self, config: Config, model=None, tokenizer=None, judge=None, prompts: Optional[Sequence] = None,
                 eval_prompts: Optional[Sequence] = None, eval_hook: Optional[Callable] = None,
                 log: Callable[[str], None] = logger.info):
        validate_online(config)
        self.config = config
        self.online: OnlineConfig = config.online
        self.log = log
        self.run_dir = config.train.output_dir
        cls = STRATEGIES[self.online.strategy]
        if judge is None and self.online.judge is not None:
            judge = build_judge(self.online.judge)
        elif judge is not None and not isinstance(judge, (PointwiseJudge, PairwiseJudge)):
            judge = build_judge(judge)
        self.judge = judge
        if cls.needs_judge and judge is None:
            raise ConfigError(f"online.judge: strategy {cls.name!r} needs a judge")
        if model is None:
            from ..models import load_policy

            model, tokenizer = load_policy(config)
        if tokenizer is None:
            raise ValueError("OnlineLoop: pass the tokenizer with the model")
        self.policy = model
        self.tokenizer = tokenizer
        self.loss_section = cls.loss_section(config.loss, self.online.options)
        self.loss_needs = build_loss(self.loss_section).needs
        self.eval_hook = eval_hook
        self._initial_copy = None
        self._frozen = None
        self.judge_calls = 0  # responses (pointwise) or comparisons (pairwise) judged by this process
        self.prompt_pool = []
        if not cls.offline_pairs:
            self.prompt_pool = list(prompts) if prompts is not None else load_prompts(
                self.online.prompts or config.data.train)
        self.eval_prompts = list(eval_prompts) if eval_prompts is not None else (
            load_prompts(self.online.eval_prompts) if self.online.eval_prompts else [])
        self.strategy: RoundStrategy = cls(self, dict(self.online.options))

    # -- paths ----------------------------------------------------------------------------------
    def round_dir(self, r: int) -> str:
        return os.path.join(self.run_dir, "rounds", f"round-{r:03d}")

    def policy_file(self, r: int) -> Optional[str]:
        path = os.path.join(self.round_dir(r), "policy.safetensors")
        return path if os.path.exists(path) else None

    def _done(self, r: int) -> bool:
        return os.path.exists(os.path.join(self.round_dir(r), "DONE"))

    # -- references -----------------------------------------------------------------------------
    def frozen_reference(self):
        """The frozen starting model (or ``reference.path``; with ``reference.kind: lora_disabled``
        the policy with its adapters switched off). TR-DPO's sync updates it in place."""
        if self._frozen is None:
            r = self.config.reference
            if r.kind == "lora_disabled" or self.strategy.reference == "base":
                self._frozen = AdapterDisabledReference(self.policy)
            elif r.path:
                from ..models import load_causal_lm

                self._frozen = ModelReference(load_causal_lm(r.path, self.config.model).to(_device(self.policy)))
            elif self._initial_copy is not None:
                self._frozen = ModelReference(self._initial_copy)
            else:
                from ..models import load_causal_lm

                self._frozen = ModelReference(load_causal_lm(self.config.model.name_or_path, self.config.model)
                                              .to(_device(self.policy)))
        return self._frozen

    def round_reference(self):
        if not self.loss_needs.reference:
            return None
        if self.strategy.reference == "previous":
            return ModelReference(copy.deepcopy(self.policy))
        return self.frozen_reference()

    # -- the run --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Dict[str, Any]:
        os.makedirs(self.run_dir, exist_ok=True)
        done = [r for r in range(self.online.rounds) if self._done(r)]
        started = any(os.path.isdir(self.round_dir(r)) for r in range(self.online.rounds))
        if started and not resume:
            raise ConfigError(f"{self.run_dir} already holds online rounds; pass --resume to continue "
                              "or choose another train.output_dir")
        if not resume and _is_main():
            self._write_config()
        uses_initial = (self.strategy.reference == "initial" or "reference" in self.strategy.sources)
        if uses_initial and not self.config.reference.path and self.config.reference.kind != "lora_disabled" \
                and (self.loss_needs.reference or "reference" in self.strategy.sources):
            base = self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy
            self._initial_copy = copy.deepcopy(base)
        self.strategy.setup()
        start = 0
        if done:
            last = max(done)
            if done != list(range(last + 1)):
                raise ConfigError(f"{self.run_dir}: rounds {done} are marked done but not in sequence")
            self._load_policy_state(self.policy_file(last))
            self._restore_reference(last)
            self.strategy.restore(last)
            start = last + 1
            self.log(f"online: resuming after round {last} ({len(done)} of {self.online.rounds} done)")
        for r in range(start, self.online.rounds):
            status = self.run_round(r)
            if status != "completed":
                return {"status": status, "round": r, "output_dir": self.run_dir}
        final = self.save_final(self.strategy.final_policy())
        summary = {"status": "completed", "rounds": self.online.rounds, "strategy": self.strategy.name,
                   "output_dir": self.run_dir, "final": final,
                   "metrics": read_jsonl(os.path.join(self.run_dir, "rounds.jsonl"))}
        return summary

    def default_round_prompts(self, r: int) -> List[Any]:
        pool = self.prompt_pool
        n = min(self.online.prompts_per_round or len(pool), len(pool))
        order = list(range(len(pool)))
        random.Random(self.config.train.seed).shuffle(order)
        start = (r * n) % len(pool)
        return [pool[order[(start + i) % len(pool)]] for i in range(n)]

    def run_round(self, r: int) -> str:
        started = time.time()
        rdir = self.round_dir(r)
        os.makedirs(rdir, exist_ok=True)
        prompts = self.strategy.round_prompts(r)
        self.log(f"online round {r + 1}/{self.online.rounds} ({self.strategy.name}): {len(prompts)} prompts")
        calls_before = self.judge_calls
        if self.online.refresh_every:
            status, stats = RefreshingRound(self, r, prompts).run()
            if status != "completed":
                return status
        else:
            groups = self.generate(r, prompts, rdir)
            self.strategy.extend_groups(groups)
            if self.strategy.needs_judge:
                self.score(groups, os.path.join(rdir, "scores.jsonl"))
            train_rows, info = self.strategy.rows(groups, r)
            if _is_main():
                write_jsonl(os.path.join(rdir, "pairs.jsonl"), info)
                write_jsonl(os.path.join(rdir, "train.jsonl"), train_rows)
                if self.strategy.needs_judge:
                    write_jsonl(os.path.join(rdir, "lists.jsonl"), [
                        {"prompt": g.prompt, "responses": [t for _, t in g.flat()], "scores": g.scores,
                         "sources": [s for s, _ in g.flat()]} for g in groups])
            _barrier()
            status, train_metrics = self.train(r, train_rows, groups)
            if status != "completed":
                return status
            stats = self._sample_stats(groups, train_rows)
            stats.update(train_metrics)
        metrics = {"round": r, "strategy": self.strategy.name, **stats,
                   "judge_calls": self.judge_calls - calls_before}
        metrics.update(self.evaluate(r))
        metrics["seconds"] = round(time.time() - started, 2)
        if hasattr(self.strategy, "round_metrics"):
            metrics.update(self.strategy.round_metrics())
        if _is_main():
            save_file(ckpt.trainable_state(self.policy), os.path.join(rdir, "policy.safetensors"))
            self._save_reference(r)
            with open(os.path.join(rdir, "metrics.json"), "w") as handle:
                json.dump(metrics, handle, indent=2)
            append_jsonl(os.path.join(self.run_dir, "rounds.jsonl"), [metrics])
            with open(os.path.join(rdir, "DONE"), "w") as handle:
                handle.write("done\n")
            shutil.rmtree(os.path.join(rdir, "train", "checkpoints"), ignore_errors=True)
        _barrier()
        self.strategy.end_round(r)
        shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
        self.log(f"online round {r + 1} done: " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
        return "completed"

    # -- generate -------------------------------------------------------------------------------
    def sampling_config(self, seed: int, templated: bool) -> SamplingConfig:
        o = self.online
        return SamplingConfig(max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p,
                              batch_size=o.generation_batch_size, seed=seed, top_k=o.top_k,
                              add_special_tokens=not templated)

    def render(self, prompts: Sequence[Any]) -> Tuple[List[str], bool]:
        templated = [isinstance(p, list) for p in prompts]
        if any(templated) and not all(templated):
            raise ValueError("online prompts mix plain text and message lists; use one form")
        if not any(templated):
            return list(prompts), False
        return [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts], True

    def sample(self, model, prompts: Sequence[Any], n: int, seed: int, path: Optional[str] = None):
        """``(texts, token counts)`` of ``n`` samples per prompt, shared across processes."""
        from ..distributed import gather_objects, rank, shard_for_rank

        local = shard_for_rank(list(prompts))
        texts_local, counts_local = [], []
        if local:
            rendered, templated = self.render(local)
            sampler = make_sampler(self.online.sampler, model, self.tokenizer,
                                   self.sampling_config(seed + 7919 * rank(), templated), path)
            texts_local, ids = sampler.sample(rendered, n)
            counts_local = [[len(row) for row in group] for group in ids]
        return gather_objects(texts_local), gather_objects(counts_local)

    def generate(self, r: int, prompts: Sequence[Any], rdir: str, path_name: str = "samples.jsonl",
                 seed_offset: int = 0) -> List[Group]:
        path = os.path.join(rdir, path_name)
        done = {(row["index"], row["source"]): row for row in read_jsonl(path)}
        groups = [Group(i, p) for i, p in enumerate(prompts)]
        size = self.online.generation_batch_size
        for s_index, source in enumerate(self.strategy.sources):
            n = self.strategy.samples_per_prompt(source)
            for start in range(0, len(prompts), size):
                missing = [i for i in range(start, min(start + size, len(prompts))) if (i, source) not in done]
                if not missing:
                    continue
                seed = self.config.train.seed + 1_000_003 * (r + 1) + 9973 * s_index + start + seed_offset
                with self.strategy.sampler_model(source) as model:
                    texts, counts = self.sample(model, [prompts[i] for i in missing], n, seed,
                                                self._sampler_path(r))
                rows = [{"index": i, "source": source, "prompt": prompts[i], "responses": t, "num_tokens": c}
                        for i, t, c in zip(missing, texts, counts)]
                if _is_main():
                    append_jsonl(path, rows)
                done.update({(row["index"], source): row for row in rows})
        for (i, source), row in done.items():
            if i < len(groups):
                groups[i].responses[source] = row["responses"]
                groups[i].num_tokens[source] = row.get("num_tokens", [0] * len(row["responses"]))
        return groups

    def _sampler_path(self, r: int) -> Optional[str]:
        """Where the sampler model's weights are on disk (only an engine such as vLLM reads them)."""
        if self.online.sampler == "hf":
            return None
        path = os.path.join(self.round_dir(r), "sampler-model")
        if _is_main() and not os.path.exists(os.path.join(path, "config.json")):
            self.save_model(self.policy, path)
        _barrier()
        return path

    # -- judge ----------------------------------------------------------------------------------
    def score(self, groups: Sequence[Group], path: str) -> None:
        """Judge every group not already in ``path`` (appending as each chunk is judged)."""
        from ..distributed import gather_objects, shard_for_rank

        done = {row["index"]: row for row in read_jsonl(path)}
        pending = [g for g in groups if g.index not in done]
        mode, scale = self.strategy.opts.get("win_prob", "bradley_terry"), float(self.strategy.opts.get("scale", 1.0))
        pointwise = isinstance(self.judge, PointwiseJudge)
        size = self.online.generation_batch_size
        for start in range(0, len(pending), size):
            chunk = shard_for_rank(pending[start:start + size])
            local = []
            if pointwise and chunk:
                flat = [(g, t) for g in chunk for _, t in g.flat()]
                values = self.judge.score([g.prompt for g, _ in flat], [t for _, t in flat])
                self.judge_calls += len(flat)
                at = 0
                for g in chunk:
                    k = len(g.flat())
                    local.append({"index": g.index, "scores": values[at:at + k]})
                    at += k
            else:
                for g in chunk:
                    texts = [t for _, t in g.flat()]
                    scores, win = judge_group(self.judge, g.prompt, texts)
                    self.judge_calls += len(texts) * (len(texts) - 1) // 2
                    local.append({"index": g.index, "scores": scores, "win": win})
            rows = gather_objects(local)
            if _is_main():
                append_jsonl(path, rows)
            done.update({row["index"]: row for row in rows})
        for g in groups:
            row = done[g.index]
            g.scores = row["scores"]
            g.win = row.get("win") or [[pair_probability(a, b, mode, scale) if i != j else 0.5
                                        for j, b in enumerate(g.scores)] for i, a in enumerate(g.scores)]

    # -- train ----------------------------------------------------------------------------------
    def round_config(self, r: int, data_path: str, output_dir: str, **train_overrides) -> Config:
        c = self.config
        return dataclasses.replace(
            c,
            data=dataclasses.replace(c.data, train=data_path, kind="pairs", limit=None),
            loss=dict(self.loss_section),
            reference=dataclasses.replace(c.reference, precompute=False),
            train=dataclasses.replace(c.train, output_dir=output_dir, seed=c.train.seed + r, **train_overrides),
            online=OnlineConfig(),
        )

    def make_trainer(self, config: Config, callbacks: Sequence[Callable] = ()):
        from .trainer import Trainer

        return Trainer(config, model=self.policy, tokenizer=self.tokenizer,
                       callbacks=list(self.strategy.callbacks()) + list(callbacks), reference=self.round_reference())

    def train(self, r: int, rows: List[dict], groups: Sequence[Group]) -> Tuple[str, Dict[str, Any]]:
        if not rows:
            self.log(f"online round {r + 1}: no usable pairs (every prompt's samples tie); the policy is unchanged")
            return "completed", {"trained": False}
        rdir = self.round_dir(r)
        config = self.round_config(r, os.path.join(rdir, "train.jsonl"), os.path.join(rdir, "train"))
        trainer = self.make_trainer(config)
        self.strategy.prepare_trainer(trainer, rows, groups)
        resume = ckpt.latest_valid_checkpoint(trainer.checkpoint_dir) is not None
        result = trainer.fit(resume=resume)
        self.policy = trainer.accelerator.unwrap_model(trainer.model)
        if result["status"] != "completed":
            return result["status"], {}
        self.strategy.after_train(trainer)
        return "completed", _last_train_metrics(os.path.join(rdir, "train", "metrics.jsonl"), result)

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, r: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.eval_prompts and self.judge is not None:
            n = self.online.eval_samples_per_prompt
            with self.strategy.sampler_model("policy") as model:
                texts, _ = self.sample(model, self.eval_prompts, n, self.config.train.seed + 424242)
            groups = [Group(i, p, {"policy": t}) for i, (p, t) in enumerate(zip(self.eval_prompts, texts))]
            calls = self.judge_calls
            scored = os.path.join(self.round_dir(r), "eval_scores.jsonl")
            if os.path.exists(scored) and _is_main():
                os.remove(scored)
            _barrier()
            self.score(groups, scored)
            self.judge_calls = calls  # evaluation does not count as training data judged
            values = [s for g in groups for s in g.scores]
            out["eval/judge_score"] = sum(values) / max(len(values), 1)
        if self.eval_hook is not None:
            with self.strategy.sampler_model("policy") as model:
                out.update({f"eval/{k}" if not k.startswith("eval/") else k: v
                            for k, v in self.eval_hook(model, r).items()})
        return out

    @staticmethod
    def _sample_stats(groups: Sequence[Group], rows: Sequence[dict]) -> Dict[str, Any]:
        """Counts, and the mean judge score of each source's samples (the policy's is its on-policy reward)."""
        stats: Dict[str, Any] = {"prompts": len(groups), "pairs": len(rows)}
        by_source: Dict[str, List[float]] = {}
        for g in groups:
            for (source, _), score in zip(g.flat(), g.scores or [None] * len(g.flat())):
                by_source.setdefault(source, [])
                if score is not None:
                    by_source[source].append(score)
        for source in SOURCES:
            count = sum(len(g.responses.get(source, [])) for g in groups)
            if count:
                stats[f"samples/{source}"] = count
            if by_source.get(source):
                stats[f"samples/{source}_score"] = sum(by_source[source]) / len(by_source[source])
        return stats

    # -- saving and restoring -------------------------------------------------------------------
    def _write_config(self) -> None:
        from .trainer import _serializable

        with open(os.path.join(self.run_dir, "config.yaml"), "w") as handle:
            yaml.safe_dump(_serializable(self.config.to_dict()), handle, sort_keys=False)

    def _load_policy_state(self, path: Optional[str]) -> None:
        if path is None:
            return
        weights = load_file(path)
        params = dict(self.policy.named_parameters())
        unknown = [k for k in weights if k not in params]
        if unknown:
            raise ValueError(f"{path}: weights the policy lacks, e.g. {unknown[:3]}")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def _save_reference(self, r: int) -> None:
        """A synced (TR-DPO) frozen reference changes across rounds: keep it with the round."""
        if self.config.reference.sync_every and isinstance(self._frozen, ModelReference) \
                and not isinstance(self._frozen, AdapterDisabledReference):
            save_file({k: v.detach().cpu().contiguous() for k, v in self._frozen.model.state_dict().items()},
                      os.path.join(self.round_dir(r), "reference.safetensors"))

    def _restore_reference(self, last: int) -> None:
        path = os.path.join(self.round_dir(last), "reference.safetensors")
        if os.path.exists(path) and self.strategy.reference == "initial":
            self.frozen_reference().model.load_state_dict(load_file(path))

    def save_model(self, model, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        if hasattr(model, "merge_and_unload"):
            model.save_pretrained(os.path.join(path, "adapter"), safe_serialization=True)
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return path

    def save_final(self, model) -> str:
        path = os.path.join(self.run_dir, "final")
        if _is_main():
            self.save_model(model, path)
        _barrier()
        return path


class RefreshingRound:
    """A round whose pairs are renewed every ``online.refresh_every`` optimizer steps (Online DPO's
    per-step mode): one Trainer for the round, whose training set is a buffer of
    ``refresh_every * batch_size * grad_accum`` pairs; each epoch of the Trainer is one buffer, and a
    callback refills the buffer from the current policy at each epoch boundary. The round's prompts
    are consumed slice by slice; each slice's samples and scores are persisted like a round's."""

    def __init__(self, loop: OnlineLoop, r: int, prompts: Sequence[Any]):
        t = loop.config.train
        self.loop, self.r, self.prompts = loop, r, list(prompts)
        self.size = loop.online.refresh_every * t.batch_size * t.grad_accum
        self.slices = max(1, math.ceil(len(self.prompts) / self.size))
        self.rdir = loop.round_dir(r)
        self.stats = {"prompts": 0, "pairs": 0, "slices": self.slices}

    def _slice_rows(self, k: int) -> List[dict]:
        loop = self.loop
        prompts = [self.prompts[(k * self.size + i) % len(self.prompts)] for i in range(self.size)]
        groups = loop.generate(self.r, prompts, self.rdir, f"samples-{k:04d}.jsonl", seed_offset=31 * k)
        loop.score(groups, os.path.join(self.rdir, f"scores-{k:04d}.jsonl"))
        rows, info = loop.strategy.rows(groups, self.r)
        if _is_main():
            write_jsonl(os.path.join(self.rdir, f"pairs-{k:04d}.jsonl"), info)
        self.stats["prompts"] += len(groups)
        self.stats["pairs"] += len(rows)
        if rows and len(rows) < self.size:  # top up by repeating this slice's pairs
            rng = random.Random(loop.config.train.seed + k)
            rows = rows + [rng.choice(rows) for _ in range(self.size - len(rows))]
        return rows[:self.size]

    def _tokenized(self, trainer, rows: List[dict]):
        from ..data.formats import PreferencePair

        pairs = [PreferencePair(row["prompt"], row["chosen"], row["rejected"],
                                {k: float(v) for k, v in row.items() if k not in ("prompt", "chosen", "rejected")},
                                f"refresh pair {i}") for i, row in enumerate(rows)]
        examples, _ = trainer._tokenize(pairs)
        for position, example in enumerate(examples):
            example.index = position
        return examples

    def run(self) -> Tuple[str, Dict[str, Any]]:
        loop = self.loop
        first = self._first_rows()
        if not first:
            return "completed", {**self.stats, "trained": False}
        data_path = os.path.join(self.rdir, "train-0000.jsonl")
        if _is_main():
            write_jsonl(data_path, first)
        _barrier()
        config = loop.round_config(self.r, data_path, os.path.join(self.rdir, "train"),
                                   epochs=self.slices, max_steps=None)
        state = {"slice": 0}

        def refresh(trainer, step):
            if step % loop.online.refresh_every or step >= trainer.total_steps:
                return
            k = step // loop.online.refresh_every
            if k >= self.slices or k == state["slice"]:
                return
            rows = self._slice_rows(k)
            if rows:
                examples = self._tokenized(trainer, rows)
                if len(examples) == len(trainer.train_examples):
                    trainer.train_examples[:] = examples
            state["slice"] = k

        trainer = loop.make_trainer(config, [refresh])
        if len(trainer.train_examples) != self.size:
            raise ValueError(f"online.refresh_every: {len(trainer.train_examples)} of {self.size} pairs survived "
                             "tokenization; raise data.max_length")
        checkpoint = ckpt.latest_valid_checkpoint(trainer.checkpoint_dir)
        if checkpoint is not None:  # resume: put the buffer of the epoch the trainer continues with
            with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
                saved = json.load(handle)
            k = saved["step"] // loop.online.refresh_every
            if k and k < self.slices:
                trainer.train_examples[:] = self._tokenized(trainer, self._slice_rows(k))
                state["slice"] = k
        result = trainer.fit(resume=checkpoint is not None)
        loop.policy = trainer.accelerator.unwrap_model(trainer.model)
        if result["status"] != "completed":
            return result["status"], {}
        return "completed", {**self.stats, **_last_train_metrics(os.path.join(self.rdir, "train", "metrics.jsonl"),
                                                                 result)}

    def _first_rows(self) -> List[dict]:
        return self._slice_rows(0)


# ------------------------------------------------------------------------------------------------
def _last_train_metrics(path: str, result: Dict[str, Any]) -> Dict[str, Any]:
    from .logging import read_metrics

    out: Dict[str, Any] = {"trained": True, "steps": result.get("step")}
    if os.path.exists(path):
        rows = [row for row in read_metrics(path) if "loss" in row]
        if rows:
            last = rows[-1]
            for key in ("loss", "rewards/accuracies", "rewards/margins"):
                if key in last:
                    out[f"train/{key}"] = last[key]
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _is_main() -> bool:
    from ..distributed import is_main_process

    return is_main_process()


def _barrier() -> None:
    from ..distributed import barrier

    barrier()


def run_online(config: Config, resume: bool = False, **kwargs) -> Dict[str, Any]:
    """``dpokit train`` with an ``online:`` section."""
    return OnlineLoop(config, **kwargs).run(resume=resume)
