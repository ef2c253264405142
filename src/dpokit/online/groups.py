"""Group round strategies: K samples per prompt from the current policy, judged, trained as one group
with a policy-gradient loss (``reinforce``, ``rloo``, ``grpo``, ``copo``; :mod:`dpokit.losses.policy_gradient`).

Each round: the policy answers each prompt ``online.samples_per_prompt`` times (the sampled token ids
are kept), the judge scores every answer, and each prompt becomes one ranked-list row
(``prompt``, ``responses``, ``scores``, ``prompt_ids``, ``response_ids``, ``group_id``) of
``rounds/round-r/train.jsonl``. Unlike the pairwise strategies, tied groups are kept (a group whose
answers all score alike gives GRPO no gradient, and that share is what ``round_metrics`` reports) and
duplicate answers stay in their group (they are samples of the policy, and the group statistics count
them). Empty answers are left out (the data layer refuses empty completions); a group with fewer than
two answers left is dropped.

The sampling policy's log-probs are computed once, before the round's first optimizer step, with the
round's starting weights (the weights that sampled), the same scorer and the same tokens as the
update (:class:`GroupEngine`); the scorer hands them to the loss as ``extras["list_old_token_logps"]``
[B, K, T] and ``extras["list_old_logps"]`` [B, K], so the clipped ratio ``pi/pi_old`` of ``grpo`` and
``copo`` is 1 on the first step and real on the later ones (``train.epochs`` > 1 or several batches
per round). They are the model's log-probs at temperature 1 without top-k/top-p truncation (as verl
and TRL with ``temperature: 1``); with another ``online.temperature`` the ratio is against the
untempered policy. COPO's extracted answers (``extras["answer_ids"]``) come from the ``answer``
option: a ``module:function`` taking ``(prompt, response)`` and returning the answer string
(default: the response text, stripped).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.prompts import is_empty
from ..errors import ConfigError
from ..io import read_jsonl
from ..losses import resolve_name
from ..losses.registry import get_spec
from ..losses.policy_gradient import (ANSWER_IDS, OLD_LOGPS, OLD_TOKEN_LOGPS, answer_ids_from_strings,
                                      copo_advantages, effective_advantages, grpo_advantages,
                                      reinforce_advantages, rloo_advantages)
from .rounds import JudgedPrompt
from .strategies import RoundStrategy, register_strategy

GROUP_ID = "group_id"
POLICY_GRADIENT_FAMILIES = ("policy_gradient",)


def loss_name_of(section: Dict[str, Any]) -> Optional[str]:
    """The registered name of a single-loss ``loss:`` section (None for sums, components, unknown names)."""
    name = section.get("name", "dpo") if isinstance(section, dict) else section
    try:
        return resolve_name(name) if isinstance(name, str) else None
    except (KeyError, ValueError):
        return None


def loss_family(section: Dict[str, Any]) -> Optional[str]:
    name = loss_name_of(section)
    return None if name is None else get_spec(name).family


def load_function(spec: str, where: str) -> Callable:
    """``module:function`` -> the callable (a clear ConfigError naming ``where`` otherwise)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where}: expected 'module:function', got {spec!r}")
    module, name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot load {spec!r} ({err})") from None
    if not callable(fn):
        raise ConfigError(f"{where}: {spec!r} is not callable")
    return fn


class GroupEngine:
    """Scorer wrapper of the group strategies: adds, per batch, the sampling policy's log-probs
    (``list_old_token_logps`` [B, K, T], ``list_old_logps`` [B, K]) and the extracted answers'
    ids (``answer_ids`` [B, K]) to ``LossInputs.extras``, keyed by each example's ``group_id``."""

    def __init__(self, engine, answers: Dict[int, List[str]]):
        self.engine = engine
        self.answers = answers
        self.old: Dict[int, List[torch.Tensor]] = {}  # group id -> per-response token log-probs

    def __getattr__(self, name):
        return getattr(self.engine, name)

    @torch.no_grad()
    def record_old_logps(self, model, examples: Sequence, batch_size: int, autocast=None) -> None:
        """The log-probs of ``model`` (the sampling policy: the round has not stepped yet) of every
        example's responses, kept per group id."""
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(examples), max(1, batch_size)):
                chunk = examples[start:start + batch_size]
                groups = [(ex.prompt_ids, ex.completions) for ex in chunk]
                with (autocast() if autocast is not None else contextlib.nullcontext()):
                    lp = self.engine.token_logprobs(model, groups)
                at = 0
                for ex in chunk:
                    rows = []
                    for _ in ex.completions:
                        n = int(lp.mask[at].sum())
                        rows.append(lp.token_logps[at, :n].detach().float().cpu())
                        at += 1
                    self.old[int(ex.extras[GROUP_ID])] = rows
        finally:
            model.train(was_training)

    def loss_inputs(self, policy, batch, reference=None):
        inputs = self.engine.loss_inputs(policy, batch, reference)
        ids = [int(i) for i in batch.extras[GROUP_ID].tolist()]
        device, dtype = inputs.list_mask.device, inputs.list_policy_logps.dtype
        if self.old:
            missing = [i for i in ids if i not in self.old]
            if missing:
                raise ValueError(f"no sampling-policy log-probs for group {missing[0]}")
            b, k, t = inputs.list_token_mask.shape
            old = torch.zeros(b, k, t, dtype=dtype)
            for row, gid in enumerate(ids):
                for col, values in enumerate(self.old[gid]):
                    old[row, col, :values.numel()] = values.to(dtype)
            old = old.to(device)
            inputs.extras[OLD_TOKEN_LOGPS] = old
            inputs.extras[OLD_LOGPS] = old.sum(-1)
        if self.answers:
            width = inputs.list_mask.shape[1]
            answer_ids, _ = answer_ids_from_strings([self.answers[gid] for gid in ids])
            padded = torch.full((len(ids), width), -1.0)
            padded[:, :answer_ids.shape[1]] = answer_ids
            inputs.extras[ANSWER_IDS] = padded.to(device)
        return inputs


def group_advantages(section: Dict[str, Any], rewards: torch.Tensor, mask: torch.Tensor,
                     answer_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """The advantages the loss of ``section`` gives each response of a batch of groups (at ratio 1,
    without the KL shaping): what decides whether a group gives any gradient."""
    name = resolve_name(section.get("name", ""))
    if name == "grpo":
        return grpo_advantages(rewards, mask, bool(section.get("scale_rewards", True)), float(section.get("eps", 1e-6)))
    if name in ("rloo", "oprl"):  # oprl: its episode advantage (the step part comes from the PRM later)
        return rloo_advantages(rewards, mask)
    if name == "reinforce":
        return reinforce_advantages(rewards, mask, section.get("baseline", "mean"))
    if name == "copo":
        keys = ("k", "b", "mode", "consistency_coef", "eps")
        local, glob, w, _ = copo_advantages(rewards, answer_ids, mask, **{k: section[k] for k in keys if k in section})
        return effective_advantages(local, glob, w, mask)
    raise ValueError(f"no advantage estimator for loss {name!r}")


def vanishing_fraction(adv: torch.Tensor, mask: torch.Tensor, tol: float = 1e-9) -> float:
    if adv.shape[0] == 0:
        return 0.0
    return float(((adv.abs() * mask) <= tol).all(-1).to(torch.float64).mean())


class GroupRound(RoundStrategy):
    """Base of the group strategies (see the module docstring). ``loss_name``: the loss it trains with
    (``loss.name`` must name it; preflight refuses any other)."""

    reference = "initial"  # the KL term (grpo's beta, rloo's kl_coef) is to the starting model
    refreshable = False
    group_strategy = True
    loss_name = ""
    OPTIONS = {"answer": None}

    def __init__(self, loop, options):
        super().__init__(loop, options)
        self.answer_fn = load_function(self.opts["answer"], "online.options.answer") if self.opts["answer"] else None
        self.engine: Optional[GroupEngine] = None
        self.answers: Dict[int, List[str]] = {}
        self.stats: Dict[str, Any] = {}
        self.round = 0

    @classmethod
    def validate_options(cls, options):
        if options.get("answer"):
            load_function(options["answer"], "online.options.answer")

    @classmethod
    def loss_section(cls, base, options):
        given = base.get("name", "dpo")
        if loss_name_of(base) != cls.loss_name:
            family = loss_family(base)
            kind = f" ({family})" if family else ""
            raise ConfigError(f"online.strategy {cls.name!r} is a group strategy: it trains loss {cls.loss_name!r} on "
                              f"groups of K samples per prompt, not loss {given!r}{kind}; set loss.name: "
                              f"{cls.loss_name} (or choose a pairwise strategy such as online_dpo)")
        return dict(base)

    def answer_of(self, prompt: Any, response: str) -> str:
        if self.answer_fn is None:
            return response.strip() if isinstance(response, str) else str(response)
        return str(self.answer_fn(prompt, response))

    def group_rows(self, groups: Sequence[JudgedPrompt]) -> Tuple[List[dict], List[List[float]], List[List[str]]]:
        rows, rewards, answers = [], [], []
        for group in groups:
            flat = group.flat()
            scores = self.effective_scores(group)
            keep = [k for k, (source, text) in enumerate(flat) if source == "policy" and not is_empty(text)]
            if len(keep) < 2:
                continue
            texts = [flat[k][1] for k in keep]
            row = {"prompt": group.prompt, "responses": texts, "scores": [float(scores[k]) for k in keep],
                   GROUP_ID: float(group.index), **group.list_ids(keep)}
            rows.append(row)
            rewards.append(row["scores"])
            answers.append([self.answer_of(group.prompt, t) for t in texts])
        return rows, rewards, answers

    def rows(self, groups, r):
        self.round = r
        rows, rewards, answers = self.group_rows(groups)
        self.answers = {int(row[GROUP_ID]): a for row, a in zip(rows, answers)}
        self.stats = self._vanishing(rewards, answers, len(groups))
        info = [{"round": r, "prompt_index": int(row[GROUP_ID]), **row, "answers": a} for row, a in zip(rows, answers)]
        return rows, info

    def list_rows(self, groups):
        return self.group_rows(groups)[0]

    def _vanishing(self, rewards: List[List[float]], answers: List[List[str]], prompts: int) -> Dict[str, Any]:
        """``groups/all_equal``: share of the round's groups whose rewards all agree (GRPO's advantage
        vanishes); ``groups/vanishing``: share whose advantages under this round's loss all vanish,
        taken over batches of ``train.batch_size`` groups in file order (COPO's global advantage is
        normalised across a batch's groups); ``groups/dropped``: prompts with fewer than two answers."""
        out: Dict[str, Any] = {"groups": len(rewards), "groups/dropped": prompts - len(rewards)}
        if not rewards:
            return out
        width = max(len(r) for r in rewards)
        values = torch.zeros(len(rewards), width, dtype=torch.float64)
        mask = torch.zeros(len(rewards), width, dtype=torch.bool)
        for i, r in enumerate(rewards):
            values[i, :len(r)] = torch.tensor(r, dtype=torch.float64)
            mask[i, :len(r)] = True
        ids, _ = answer_ids_from_strings(answers)
        ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=-1.0).to(torch.float64)
        out["groups/all_equal"] = vanishing_fraction(grpo_advantages(values, mask), mask)
        size = max(1, self.loop.config.train.batch_size)
        vanished = 0.0
        for start in range(0, len(rewards), size):
            sl = slice(start, start + size)
            adv = group_advantages(self.loop.loss_section, values[sl], mask[sl], ids[sl])
            vanished += vanishing_fraction(adv, mask[sl]) * values[sl].shape[0]
        out["groups/vanishing"] = vanished / len(rewards)
        distinct = [len(set(a)) for a in answers]
        out["groups/distinct_answers"] = sum(distinct) / len(distinct)
        return out

    def trainer_options(self, train_rows, groups):
        def wrap(scorer):
            self.engine = GroupEngine(scorer, self.answers)
            return self.engine

        return {"scorer_wrapper": wrap}

    def prepare_trainer(self, trainer):
        """The sampling policy's log-probs, before the first optimizer step (the trainer's model still
        holds the weights that sampled this round)."""
        self.engine.old.clear()
        self.engine.record_old_logps(trainer.model, trainer.train_examples, self.loop.config.train.batch_size,
                                     trainer.accelerator.autocast)

    def round_metrics(self):
        out = dict(self.stats)
        path = os.path.join(self.loop.round_dir(self.round), "train", "metrics.jsonl")
        logged = [row["advantages/zero_groups"] for row in read_jsonl(path) if "advantages/zero_groups" in row] \
            if os.path.exists(path) else []
        if logged:  # as trained: the mean over the logged optimizer steps' batches
            out["train/zero_groups_mean"] = sum(logged) / len(logged)
        return out


def _group_strategy(name: str, source: str, doc: str):
    cls = type(f"{name.upper()}Round", (GroupRound,), {"loss_name": name, "source": source, "__doc__": doc})
    return register_strategy(name)(cls)


GRPORound = _group_strategy(
    "grpo", "Shao et al. 2024, arXiv 2402.03300",
    "GRPO rounds: K samples per prompt from the current policy, judged, trained with the ``grpo`` loss "
    "(clipped ratio against the sampling policy, k3 KL to the starting model when ``beta`` > 0).")
RLOORound = _group_strategy(
    "rloo", "Ahmadian et al. 2024, arXiv 2402.14740",
    "RLOO rounds: K samples per prompt from the current policy, judged, trained with the ``rloo`` loss "
    "(leave-one-out baseline; KL-shaped reward to the starting model when ``kl_coef`` > 0).")
REINFORCERound = _group_strategy(
    "reinforce", "Williams 1992",
    "REINFORCE rounds: K samples per prompt from the current policy, judged, trained with the "
    "``reinforce`` loss (group-mean or no baseline).")
COPORound = _group_strategy(
    "copo", "Han et al. 2025, arXiv 2508.04138",
    "COPO rounds: GRPO rounds whose groups also carry each answer's extracted final answer "
    "(option ``answer``), trained with the ``copo`` loss: consistent groups (all answers alike) learn "
    "from the advantage normalised across the batch's groups instead of giving no gradient.")
