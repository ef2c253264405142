"""OPRL rounds (online process reward learning; Liu et al. 2025, arXiv 2509.19199, released as "iStar"):
each round alternates the implicit process reward model's update and the policy's.

    samples    <- G answers per prompt from the current policy pi_old, judged (the episode return)
    PRM update <- trajectory DPO (loss ``oprl_prm``) of the PRM pi_phi against pi_old on the round's groups
                  (successful vs failed answers of one prompt)                       rounds/round-r/prm/
    step reward r_phi(a_t) = prm_beta * sum_{tokens of a_t} log pi_phi / pi_old, with the updated PRM
    policy     <- PPO-clip on A^E + w A^S (loss ``oprl``; RLOO on episode returns and on step rewards)

The PRM ``pi_phi`` is a copy of the starting policy, kept across rounds (``rounds/round-r/prm.safetensors``).

**Steps.** With ``online.options.step_separator`` (e.g. the arithmetic task's ``";"``) a response is
split into steps at the separator's tokens (a separator belongs to the step it ends, as the step
scorer counts them: :func:`dpokit.scoring.steps.step_index`); step ``s``'s reward is
``prm_beta * sum_{tokens k of step s} (log pi_phi - log pi_old)``, the PRM's trajectory score
(``step_mean``) is the mean of a response's step rewards, and ``oprl`` combines the RLOO step
advantages with the episode advantage per step (``A = A^E + w A^S``, broadcast over the step's
tokens; the released ``compute_istar_rloo_advantage``). Without it every response is one step (the earlier behaviour).

PARTIAL: the paper's actions are the turns of a multi-turn episode with environment observations in
between; here the steps of one response stand for them (no observation tokens between steps). The
released step baseline (``step_baseline: first``, the mean of the first steps of the group) is kept as
read; whether the paper means all steps is not established (``all`` is ``[partial]``). The paper runs the
PRM update and a policy step at every training step; here both happen once per round (the policy's
round takes ``train.epochs`` passes with the clipped ratio against ``pi_old``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..models import trainable_state
from ..reference import ModelReference
from ..scoring.steps import separator_ids, step_index
from .groups import GROUP_ID, GroupEngine, GroupRound
from .strategies import register_strategy


def token_steps(completion: List[int], separators: Optional[List[int]]) -> List[int]:
    """The step index of every token of a response (all 0 without separators)."""
    return step_index(completion, separators) if separators else [0] * len(completion)


def step_rewards_of(prm_token_logps: torch.Tensor, old_token_logps: torch.Tensor, steps: List[int],
                    beta: float) -> List[float]:
    """``beta * sum_{tokens k of step s} (log pi_phi_k - log pi_old_k)`` for every step ``s`` of one
    response (``steps``: each token's step index, as many as the log-probs)."""
    n = len(steps)
    index = torch.tensor(steps, dtype=torch.long)
    diff = (prm_token_logps[:n].double() - old_token_logps[:n].double())
    sums = torch.zeros(int(index.max()) + 1 if n else 1, dtype=torch.float64).index_add_(0, index, diff)
    return (beta * sums).tolist()


class OPRLEngine(GroupEngine):
    """Adds OPRL's per-step inputs: ``step_rewards`` / ``step_mask`` [B, G, S] (S: the most steps of a
    response in the batch) and ``token_step`` [B, G, T] (each response token's step, -1 elsewhere)."""

    def __init__(self, engine, answers):
        super().__init__(engine, answers)
        self.step_rewards: Dict[int, List[List[float]]] = {}  # group id -> per response, per step
        self.token_steps: Dict[int, List[List[int]]] = {}  # group id -> per response, per token

    def loss_inputs(self, policy, batch, reference=None):
        inputs = super().loss_inputs(policy, batch, reference)
        ids = [int(i) for i in batch.extras[GROUP_ID].tolist()]
        mask = inputs.list_mask
        b, g, t = inputs.list_token_mask.shape
        missing = [gid for gid in ids if gid not in self.step_rewards or gid not in self.token_steps]
        if missing:
            raise ValueError(f"no step rewards for group {missing[0]}")
        width = max(len(r) for gid in ids for r in self.step_rewards[gid])
        dtype = inputs.list_policy_logps.dtype
        rewards = torch.zeros(b, g, width, dtype=dtype)
        step_mask = torch.zeros(b, g, width, dtype=dtype)
        token_step = torch.full((b, g, t), -1.0, dtype=dtype)
        for row, gid in enumerate(ids):
            for col, (values, steps) in enumerate(zip(self.step_rewards[gid], self.token_steps[gid])):
                rewards[row, col, :len(values)] = torch.tensor(values, dtype=dtype)
                step_mask[row, col, :len(values)] = 1.0
                token_step[row, col, :min(len(steps), t)] = torch.tensor(steps[:t], dtype=dtype)
        token_step = torch.where(inputs.list_token_mask.cpu() & mask.cpu().unsqueeze(-1), token_step, -1.0)
        device = mask.device
        inputs.extras.update(step_rewards=rewards.to(device), step_mask=step_mask.to(device) * mask.unsqueeze(-1),
                             token_step=token_step.to(device))
        return inputs


class StepCountEngine:
    """The PRM trainer's scorer: ``extras["list_num_steps"]`` [B, G], each response's steps (``counts``:
    group id -> per response; 1 for every response without it)."""

    def __init__(self, engine, counts: Optional[Dict[int, List[int]]] = None):
        self.engine = engine
        self.counts = counts or {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        inputs = self.engine.loss_inputs(policy, batch, reference)
        steps = torch.ones_like(inputs.list_policy_logps)
        if self.counts and GROUP_ID in batch.extras:
            for row, gid in enumerate(int(i) for i in batch.extras[GROUP_ID].tolist()):
                values = self.counts.get(gid, [])
                steps[row, :len(values)] = torch.tensor(values, dtype=steps.dtype)
        inputs.extras["list_num_steps"] = steps
        return inputs


@register_strategy("oprl")
class OPRLRound(GroupRound):
    """OPRL (PARTIAL, the steps of one response stand for an episode's turns; Liu et al. 2025, arXiv
    2509.19199): each round updates the implicit PRM with trajectory DPO against the sampling policy, then
    trains the policy with ``oprl`` on episode + step advantages. Options: ``prm_beta`` 0.05
    (``beta_train``), ``prm_lr`` (default ``train.lr``; the released script uses 1e-6 with a policy lr of
    5e-7), ``prm_epochs`` 1, ``step_separator`` (None: one step per response)."""

    loss_name = "oprl"
    verified = "partial"
    source = "Liu et al. 2025, arXiv 2509.19199"
    OPTIONS = {"answer": None, "prm_beta": 0.05, "prm_lr": None, "prm_epochs": 1, "step_separator": None}

    def setup(self):
        sep = self.opts["step_separator"]
        try:
            self.separators = separator_ids(self.loop.tokenizer, sep) if sep else None
        except ValueError as err:
            raise ConfigError(f"online.options.step_separator: {err}") from None
        self.prm = copy.deepcopy(self.loop.policy)  # pi_phi starts as the starting policy
        for p in self.prm.parameters():
            p.requires_grad_(True)
        self.prm_metrics: Dict[str, float] = {}

    def restore(self, last_done):
        path = os.path.join(self.loop.round_dir(last_done), "prm.safetensors")
        if os.path.exists(path):
            params = dict(self.prm.named_parameters())
            with torch.no_grad():
                for name, value in load_file(path).items():
                    params[name].copy_(value.to(params[name].device, params[name].dtype))

    def trainer_options(self, train_rows, groups):
        def wrap(scorer):
            self.engine = OPRLEngine(scorer, self.answers)
            return self.engine

        return {"scorer_wrapper": wrap}

    def prepare_trainer(self, trainer):
        super().prepare_trainer(trainer)  # pi_old's log-probs, before any step
        self.engine.token_steps = {int(ex.extras[GROUP_ID]): [token_steps(c, self.separators) for c in ex.completions]
                                   for ex in trainer.train_examples}
        self._update_prm(trainer)
        self.engine.step_rewards = self._step_rewards(trainer)

    def _update_prm(self, policy_trainer) -> None:
        Trainer = type(policy_trainer)  # the round's trainer class (online/ does not import train/ here)
        loop, r = self.loop, self.round
        rdir = loop.round_dir(r)
        out = os.path.join(rdir, "prm")
        shutil.rmtree(out, ignore_errors=True)  # a resumed round updates the PRM of the previous round again
        base = loop.round_config(r, os.path.join(rdir, "train.jsonl"), out)
        t = base.train
        config = dataclasses.replace(
            base, loss={"name": "oprl_prm", "beta": float(self.opts["prm_beta"])},
            train=dataclasses.replace(t, lr=float(self.opts["prm_lr"] or t.lr), epochs=int(self.opts["prm_epochs"]),
                                      max_steps=None))
        sampler = ModelReference(copy.deepcopy(loop.policy))  # pi_old: the policy has not stepped yet
        counts = {gid: [max(steps, default=0) + 1 for steps in rows] for gid, rows in self.engine.token_steps.items()}
        trainer = Trainer(config, model=self.prm, tokenizer=loop.tokenizer, reference=sampler,
                          scorer_wrapper=lambda scorer: StepCountEngine(scorer, counts))
        trainer.fit()
        self.prm = trainer.accelerator.unwrap_model(trainer.model)
        rows = [row for row in _read(os.path.join(out, "metrics.jsonl")) if "prm/pair_accuracy" in row]
        self.prm_metrics = {f"prm/{k.split('/', 1)[1]}": rows[-1][k] for k in rows[-1] if k.startswith("prm/")} \
            if rows else {}
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)

    @torch.no_grad()
    def _step_rewards(self, trainer) -> Dict[int, List[List[float]]]:
        """``prm_beta * sum_{step's tokens} (log pi_phi - log pi_old)`` per response and step, with the
        updated PRM (:func:`step_rewards_of`)."""
        beta = float(self.opts["prm_beta"])
        was = self.prm.training
        self.prm.eval()
        out: Dict[int, List[List[float]]] = {}
        size = max(1, self.loop.config.train.batch_size)
        examples = trainer.train_examples
        for start in range(0, len(examples), size):
            chunk = examples[start:start + size]
            lp = self.engine.engine.token_logprobs(self.prm, [(ex.prompt_ids, ex.completions) for ex in chunk])
            at = 0
            for ex in chunk:
                gid = int(ex.extras[GROUP_ID])
                values = []
                for old, steps in zip(self.engine.old[gid], self.engine.token_steps[gid]):
                    n = int(lp.mask[at].sum())
                    values.append(step_rewards_of(lp.token_logps[at, :n].float().cpu(), old, steps[:n], beta))
                    at += 1
                out[gid] = values
        self.prm.train(was)
        return out

    def round_metrics(self):
        out = super().round_metrics()
        out.update(self.prm_metrics)
        per_response = [r for values in (self.engine.step_rewards.values() if self.engine else []) for r in values]
        rewards = [v for r in per_response for v in r]
        if rewards:
            out["prm/step_reward_mean"] = sum(rewards) / len(rewards)
            out["prm/steps_per_response"] = len(rewards) / len(per_response)
        return out

    def after_train(self, trainer):  # before the round is marked done: a resumed run finds the PRM with it
        save_file(trainable_state(self.prm), os.path.join(self.loop.round_dir(self.round), "prm.safetensors"))


def _read(path: str):
    from ..io import read_jsonl

    return read_jsonl(path) if os.path.exists(path) else []
