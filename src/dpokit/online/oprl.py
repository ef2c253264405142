"""OPRL rounds (online process reward learning; Liu et al. 2025, arXiv 2509.19199, released as "iStar"):
each round alternates the implicit process reward model's update and the policy's.

    samples    <- G answers per prompt from the current policy pi_old, judged (the episode return)
    PRM update <- trajectory DPO (loss ``oprl_prm``) of the PRM pi_phi against pi_old on the round's groups
                  (successful vs failed answers of one prompt)                       rounds/round-r/prm/
    step reward r_phi(a_t) = prm_beta * sum_{tokens of a_t} log pi_phi / pi_old, with the updated PRM
    policy     <- PPO-clip on A^E + w A^S (loss ``oprl``; RLOO on episode returns and on step rewards)

The PRM ``pi_phi`` is a copy of the starting policy, kept across rounds (``rounds/round-r/prm.safetensors``).

PARTIAL: one step per response. The action segmentation of a multi-turn episode (the paper's turns)
is not implemented: every response is one action, so ``A^S`` is the RLOO transform of the response's
whole implicit reward and the ``step_mean`` trajectory score equals the step reward. The paper runs the
PRM update and a policy step at every training step; here both happen once per round (the policy's
round takes ``train.epochs`` passes with the clipped ratio against ``pi_old``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import Dict, List

import torch
from safetensors.torch import load_file, save_file

from ..models import trainable_state
from ..reference import ModelReference
from .groups import GROUP_ID, GroupEngine, GroupRound
from .strategies import register_strategy


class OPRLEngine(GroupEngine):
    """Adds OPRL's per-step inputs: ``step_rewards`` / ``step_mask`` [B, G, 1] (one step per response)
    and ``token_step`` [B, G, T] (0 on each response's tokens, -1 elsewhere)."""

    def __init__(self, engine, answers):
        super().__init__(engine, answers)
        self.step_rewards: Dict[int, List[float]] = {}

    def loss_inputs(self, policy, batch, reference=None):
        inputs = super().loss_inputs(policy, batch, reference)
        ids = [int(i) for i in batch.extras[GROUP_ID].tolist()]
        mask = inputs.list_mask
        rewards = torch.zeros(mask.shape, dtype=inputs.list_policy_logps.dtype)
        for row, gid in enumerate(ids):
            values = self.step_rewards.get(gid)
            if values is None:
                raise ValueError(f"no step rewards for group {gid}")
            rewards[row, :len(values)] = torch.tensor(values, dtype=rewards.dtype)
        token_mask = inputs.list_token_mask & mask.unsqueeze(-1)
        inputs.extras.update(step_rewards=rewards.to(mask.device).unsqueeze(-1),
                             step_mask=mask.to(rewards.dtype).unsqueeze(-1),
                             token_step=torch.where(token_mask, 0, -1).to(rewards.dtype))
        return inputs


class StepCountEngine:
    """The PRM trainer's scorer: every response is one step (``extras["list_num_steps"]`` = 1)."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_inputs(self, policy, batch, reference=None):
        inputs = self.engine.loss_inputs(policy, batch, reference)
        inputs.extras["list_num_steps"] = torch.ones_like(inputs.list_policy_logps)
        return inputs


@register_strategy("oprl")
class OPRLRound(GroupRound):
    """OPRL (PARTIAL, one step per response; Liu et al. 2025, arXiv 2509.19199): each round updates the
    implicit PRM with trajectory DPO against the sampling policy, then trains the policy with ``oprl`` on
    episode + step advantages. Options: ``prm_beta`` 0.05 (``beta_train``), ``prm_lr`` (default
    ``train.lr``; the released script uses 1e-6 with a policy lr of 5e-7), ``prm_epochs`` 1."""

    loss_name = "oprl"
    verified = "partial"
    source = "Liu et al. 2025, arXiv 2509.19199"
    OPTIONS = {"answer": None, "prm_beta": 0.05, "prm_lr": None, "prm_epochs": 1}

    def setup(self):
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
        trainer = Trainer(config, model=self.prm, tokenizer=loop.tokenizer, reference=sampler,
                          scorer_wrapper=StepCountEngine)
        trainer.fit()
        self.prm = trainer.accelerator.unwrap_model(trainer.model)
        rows = [row for row in _read(os.path.join(out, "metrics.jsonl")) if "prm/pair_accuracy" in row]
        self.prm_metrics = {f"prm/{k.split('/', 1)[1]}": rows[-1][k] for k in rows[-1] if k.startswith("prm/")} \
            if rows else {}
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)

    @torch.no_grad()
    def _step_rewards(self, trainer) -> Dict[int, List[float]]:
        """``prm_beta * (log pi_phi(y) - log pi_old(y))`` per response (one step), with the updated PRM."""
        beta = float(self.opts["prm_beta"])
        was = self.prm.training
        self.prm.eval()
        out: Dict[int, List[float]] = {}
        size = max(1, self.loop.config.train.batch_size)
        examples = trainer.train_examples
        for start in range(0, len(examples), size):
            chunk = examples[start:start + size]
            lp = self.engine.engine.token_logprobs(self.prm, [(ex.prompt_ids, ex.completions) for ex in chunk])
            at = 0
            for ex in chunk:
                gid = int(ex.extras[GROUP_ID])
                values = []
                for old in self.engine.old[gid]:
                    values.append(beta * (float(lp.sums[at]) - float(old.sum())))
                    at += 1
                out[gid] = values
        self.prm.train(was)
        return out

    def round_metrics(self):
        out = super().round_metrics()
        out.update(self.prm_metrics)
        rewards = [v for values in (self.engine.step_rewards.values() if self.engine else []) for v in values]
        if rewards:
            out["prm/step_reward_mean"] = sum(rewards) / len(rewards)
        return out

    def after_train(self, trainer):  # before the round is marked done: a resumed run finds the PRM with it
        save_file(trainable_state(self.prm), os.path.join(self.loop.round_dir(self.round), "prm.safetensors"))


def _read(path: str):
    from ..io import read_jsonl

    return read_jsonl(path) if os.path.exists(path) else []
