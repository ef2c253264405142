"""Round strategies of online training: what one method changes in a round (reference, samplers,
how judged samples become training rows, the loss, hooks between rounds), as a registry.

``STRATEGIES[name]`` is a :class:`RoundStrategy` subclass; :class:`dpokit.online.loop.OnlineLoop`
calls its hooks and knows no method by name. A new online method is a new subclass with
``@register_strategy(name)`` (and, if its loss needs more inputs, a registered loss and an engine
wrapper like :class:`SideRowsEngine`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import torch
from safetensors.torch import load_file

from ..data import UnpairedExample, load_examples, tokenize_examples
from ..data.formats import iter_records
from ..data.prompts import is_empty, text_key
from ..errors import ConfigError
from ..losses import resolve_name
from ..models import trainable_state
from .engines import SideRowsEngine, TwoModuleEngine, active_adapter
from ..io import read_jsonl
from .rounds import PAIR_ROW_KEYS, SOURCES, JudgedPrompt, pair_info as _info, select_pairs

class RoundContext(Protocol):
    """What a strategy may use of the loop that runs it (:class:`dpokit.online.loop.OnlineLoop`)."""

    config: Any  # the run's Config
    online: Any  # its online section
    policy: torch.nn.Module  # the current policy (strategies may replace it between rounds)
    tokenizer: Any

    def round_dir(self, r: int) -> str: ...

    def policy_file(self, r: int) -> Optional[str]: ...

    def frozen_reference(self) -> Any: ...

    def default_round_prompts(self, r: int) -> List[Any]: ...


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
    lists_ok: ClassVar[bool] = True  # with a listwise loss, trains on the judged lists themselves
    min_samples: ClassVar[int] = 2  # samples per prompt needed to compare the policy's own answers
    group_strategy: ClassVar[bool] = False  # trains a policy-gradient loss on whole groups (dpokit.online.groups)
    verified: ClassVar[str] = "verified"
    source: ClassVar[str] = ""
    OPTIONS: ClassVar[Dict[str, Any]] = {}
    BASE_OPTIONS: ClassVar[Dict[str, Any]] = {"missing_eos_penalty": 0.0}

    def __init__(self, loop: RoundContext, options: Dict[str, Any]):
        self.loop = loop
        self.opts = {**self.BASE_OPTIONS, **self.OPTIONS, **check_options(type(self), options)}

    @classmethod
    def option_names(cls) -> List[str]:
        return sorted({**cls.BASE_OPTIONS, **cls.OPTIONS})

    @classmethod
    def validate_options(cls, options: Dict[str, Any]) -> None:
        """Check option values at config validation (raise ConfigError naming ``online.options.KEY``)."""

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

    def extend_groups(self, groups: Sequence[JudgedPrompt]) -> None:
        """Add responses that are not sampled (e.g. a teacher's) before judging."""

    @contextlib.contextmanager
    def sampler_model(self, source: str) -> Iterator[torch.nn.Module]:
        if source == "reference":
            with self.loop.frozen_reference().active() as model:
                yield model
        else:
            yield self.loop.policy

    def effective_scores(self, group: JudgedPrompt) -> List[float]:
        """Judge scores, minus ``missing_eos_penalty`` for responses cut at ``max_new_tokens``."""
        penalty = self.opts["missing_eos_penalty"]
        if not penalty:
            return list(group.scores)
        limit = self.loop.online.max_new_tokens
        lengths = [n for source in SOURCES for n in group.num_tokens.get(source, [])]
        return [s - penalty if n >= limit else s for s, n in zip(group.scores, lengths)]

    def rows(self, groups: Sequence[JudgedPrompt], r: int) -> Tuple[List[dict], List[dict]]:
        """``(training rows, pair records with provenance)``: by default pairs of the policy's
        own samples (plus any other source) built with ``online.pairs`` and ``online.min_margin``."""
        train, info = [], []
        for group in groups:
            flat = group.flat()
            scores = self.effective_scores(group)
            for i, j in select_pairs([t for _, t in flat], scores, self.loop.online.pairs,
                                     self.loop.online.min_margin):
                train.append(group.pair_row(i, j))
                info.append(_info(group, r, i, j, scores))
        return train, info

    def list_rows(self, groups: Sequence[JudgedPrompt]) -> List[dict]:
        """Ranked lists (``prompt``, ``responses``, ``scores``) for a listwise loss: each prompt's distinct,
        non-empty responses; lists whose responses all tie are left out."""
        rows = []
        for group in groups:
            keep, seen = [], set()
            for k, ((_, text), score) in enumerate(zip(group.flat(), self.effective_scores(group))):
                if not is_empty(text) and text_key(text) not in seen:
                    seen.add(text_key(text))
                    keep.append((text, score, k))
            if len(keep) >= 2 and len({score for _, score, _ in keep}) > 1:
                rows.append({"prompt": group.prompt, "responses": [t for t, *_ in keep],
                             "scores": [score for _, score, _ in keep], **group.list_ids([k for *_, k in keep])})
        return rows

    def callbacks(self) -> List[Callable]:
        return []

    def trainer_options(self, train_rows: List[dict], groups: Sequence[JudgedPrompt]) -> Dict[str, Any]:
        """Constructor arguments of the round's Trainer (``scorer_wrapper``, ``param_groups``)."""
        return {}

    def prepare_trainer(self, trainer) -> None:
        """After the round's Trainer is built, before it trains (through its public methods only)."""

    def round_metrics(self) -> Dict[str, Any]:
        """Extra values for the round's line in ``rounds.jsonl``."""
        return {}

    def after_train(self, trainer) -> None:
        pass

    def end_round(self, r: int) -> None:
        """After the round is trained and evaluated (the policy is the round's result)."""

    def final_policy(self) -> torch.nn.Module:
        return self.loop.policy


def with_beta(section: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    """A strategy's own loss section, with the configured loss's ``beta`` carried over when it has one."""
    return {**section, "beta": base["beta"]} if "beta" in base else section


def check_options(cls, options: Dict[str, Any]) -> Dict[str, Any]:
    valid = cls.option_names()
    unknown = sorted(set(options or {}) - set(valid))
    if unknown:
        raise ConfigError(f"online.options: strategy {cls.name!r} has no option(s) {unknown}; "
                          f"it accepts {valid or 'none'}")
    cls.validate_options(dict(options or {}))
    return dict(options or {})


@register_strategy("online_dpo")
class OnlineDPO(RoundStrategy):
    """Online DPO / OAIF (Guo et al. 2024, arXiv 2402.04792; TRL OnlineDPOTrainer): fresh pairs from
    the current policy every round (``online.refresh_every``: every N steps), judged, trained against
    the frozen initial model. ``missing_eos_penalty`` is subtracted from the score of a response cut
    at ``max_new_tokens`` (TRL's option)."""

    reference = "initial"
    source = "Guo et al. 2024, arXiv 2402.04792"


@register_strategy("iterative_dpo")
class IterativeDPO(RoundStrategy):
    """Iterative DPO: each round trains on pairs sampled from the round's starting policy, with that
    policy as the reference (self-rewarding / iterative-RPO style loops)."""

    reference = "previous"
    source = "iterative DPO with the previous iterate as reference"


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
    lists_ok = False
    source = "Rosset et al. 2024, arXiv 2404.03715, Alg. 2"
    OPTIONS = {"teacher": None, "min_chosen_score": None, "min_margin": None, "student_min_margin": None,
               "replay": 0.0}

    def __init__(self, loop, options):
        super().__init__(loop, options)
        self.teacher: Dict[str, str] = {}
        if self.opts["teacher"]:
            for _, record in iter_records(self.opts["teacher"]):
                response = record.get("response", record.get("chosen"))
                if "prompt" not in record or response is None:
                    raise ConfigError("online.options.teacher: records need 'prompt' and 'response'")
                self.teacher[text_key(record["prompt"])] = response

    def _margin(self, positive_source: str) -> float:
        base = self.opts["min_margin"] if self.opts["min_margin"] is not None else self.loop.online.min_margin
        if positive_source == "policy" and self.opts["student_min_margin"] is not None:
            return self.opts["student_min_margin"]
        return base

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            answer = self.teacher.get(text_key(group.prompt))
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
                train.append(group.pair_row(i, j))
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
                    train.append({k: row[k] for k in PAIR_ROW_KEYS if k in row})
                    info.append({**row, "replayed_in": r})
        return train, info

    def extend_groups(self, groups: Sequence[JudgedPrompt]) -> None:
        for group in groups:
            answer = self.teacher.get(text_key(group.prompt))
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
    lists_ok = False
    source = "Wu et al. 2024, arXiv 2405.00675"
    OPTIONS = {"win_prob": "bradley_terry", "scale": 1.0}

    @classmethod
    def loss_section(cls, base, options):
        if resolve_name(base.get("name", "dpo")) in ("sppo", "sppo_hard"):
            return dict(base)
        section = {"name": "sppo"}
        return with_beta(section, base)

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            flat = group.flat()
            rates = [sum(row) / len(row) for row in group.win]
            for i, j in select_pairs([t for _, t in flat], rates, "best_vs_worst", self.loop.online.min_margin):
                train.append(group.pair_row(i, j, win_prob_chosen=rates[i], win_prob_rejected=rates[j]))
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
    source = "He et al. 2024, arXiv 2410.06293"
    OPTIONS = {"alpha": 0.3}

    def setup(self):
        self.previous = self._snapshot()  # theta_hat_0 = the starting model
        self.latest: Optional[Dict[str, torch.Tensor]] = None

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in trainable_state(self.loop.policy).items()}

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
    lists_ok = False
    source = "Xie et al. 2024, arXiv 2405.21046"
    OPTIONS = {"alpha": 1e-5, "keep_ties": False}

    @classmethod
    def loss_section(cls, base, options):
        name = resolve_name(base.get("name", "dpo"))
        if name == "xpo":
            return dict(base)
        if name not in ("dpo", "ipo"):
            raise ConfigError(f"online.strategy xpo trains with loss dpo or ipo (plus its exploration term), "
                              f"not {name!r}")
        section = {"name": "xpo", "loss_type": "sigmoid" if name == "dpo" else "ipo",
                   "alpha": float(options.get("alpha", cls.OPTIONS["alpha"]))}
        return with_beta(section, base)

    def rows(self, groups, r):
        train, info = [], []
        for group in groups:
            flat = group.flat()
            scores = self.effective_scores(group)
            for i, j in zip(group.positions("policy"), group.positions("reference")):
                if flat[i][1] == flat[j][1] or is_empty(flat[i][1]) or is_empty(flat[j][1]) \
                        or (scores[i] == scores[j] and not self.opts["keep_ties"]):
                    continue
                chosen, rejected = (i, j) if scores[i] >= scores[j] else (j, i)
                train.append(group.pair_row(chosen, rejected, ref_is_chosen=1.0 if chosen == j else 0.0))
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
    lists_ok = False
    min_samples = 1
    verified = "partial"
    source = "Song et al. 2024, arXiv 2406.01462"
    OPTIONS = {"lam": 0.05, "k": None}

    @classmethod
    def loss_section(cls, base, options):
        section = {"name": "hypo", "lam": float(options.get("lam", cls.OPTIONS["lam"]))}
        return with_beta(section, base)

    def setup(self):
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
            key = text_key(pair.prompt)
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

    def trainer_options(self, train_rows, groups):
        d = self.loop.config.data
        side: Dict[int, tuple] = {}
        for group in groups:
            samples = [(t, ids) for t, ids in zip(group.responses.get("policy", []),
                                                  group.completion_ids.get("policy", [])) if t.strip()]
            if not samples:
                continue
            prompt_ids = group.prompt_ids.get("policy")
            examples = [UnpairedExample(group.prompt, text, True, {}, f"round sample {group.index}",
                                        prompt_ids if ids is not None else None, ids) for text, ids in samples]
            tokenized, _ = tokenize_examples(examples, self.loop.tokenizer, d.max_length, d.max_prompt_length,
                                             d.truncation_mode, d.append_eos, "skip")
            if tokenized:
                side[group.index] = (tokenized[0].prompt_ids, [ex.completions[0] for ex in tokenized])
        return {"scorer_wrapper": lambda scorer: SideRowsEngine(scorer, side)}


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
    lists_ok = False
    verified = "partial"
    source = "Qi et al. 2024, arXiv 2406.05534"
    OPTIONS = {"alpha": 0.1, "slow_ratio": 0.5, "chasing_interval": 10, "ema": 0.9}
    MODULES = ("fast", "slow")

    @classmethod
    def loss_section(cls, base, options):
        section = {"name": "ofs_dpo", "alpha": float(options.get("alpha", cls.OPTIONS["alpha"])),
                   "ema": float(options.get("ema", cls.OPTIONS["ema"]))}
        return with_beta(section, base)

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

    def trainer_options(self, train_rows, groups):
        def param_groups(model):  # the slow module's parameters in a second optimizer group
            slow = f".{self.MODULES[1]}."
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            return [{"params": [p for n, p in trainable if slow not in n]},
                    {"params": [p for n, p in trainable if slow in n]}]

        return {"scorer_wrapper": lambda scorer: TwoModuleEngine(scorer, *self.MODULES), "param_groups": param_groups}

    def prepare_trainer(self, trainer):
        loss = self._loss(trainer)
        if loss is None or not hasattr(loss, "maybe_swap"):
            raise ConfigError("online.strategy ofs_dpo needs the plain ofs_dpo loss (no modifiers)")
        if not hasattr(trainer.scheduler, "lr_lambdas"):
            raise ConfigError("online.strategy ofs_dpo needs a LambdaLR-based scheduler (cosine, linear, constant)")
        loss.load_state_dict(self.loss_state)
        self._apply_roles(trainer, loss.fast)

    def _apply_roles(self, trainer, fast: int) -> None:
        lr, ratio = self.loop.config.train.lr, float(self.opts["slow_ratio"])
        trainer.set_base_lrs([lr if i == fast else lr * ratio for i in (0, 1)])

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

