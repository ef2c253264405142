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

import copy
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import Config, OnlineConfig
from ..distributed import barrier, is_main_process
from ..errors import ConfigError
from ..losses import build_loss
from ..models import load_causal_lm, load_policy
from ..preflight import check_run
from ..preference.judges import PairwiseJudge, PointwiseJudge, build_judge, judge_group, pair_probability
from ..reference import AdapterDisabledReference, ModelReference
from ..sampling import SamplingConfig, make_sampler
from ..train import Trainer
from ..train import checkpoint as ckpt
from .refresh import RefreshingRound
from ..data.prompts import load_prompts
from ..io import append_jsonl, read_jsonl, write_jsonl
from .rounds import SOURCES, JudgedPrompt, last_train_metrics, select_pairs
from .catalog import STRATEGIES, RoundStrategy, register_strategy

logger = logging.getLogger("dpokit")

__all__ = ["OnlineLoop", "run_online", "STRATEGIES", "RoundStrategy", "register_strategy",
           "JudgedPrompt", "select_pairs", "load_prompts", "read_jsonl"]


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
class OnlineLoop:
    """Runs ``config.online.rounds`` rounds of the configured strategy; see the module docstring.

    Python API: ``OnlineLoop(config, model=None, tokenizer=None, judge=None, prompts=None,
    eval_prompts=None, eval_hook=None).run(resume=False)``; ``judge`` may be any judge object
    (:mod:`dpokit.preference.judges`) or a callable ``(prompt, response) -> score``; ``eval_hook(policy, round)``
    returns extra metrics for the round.
    """

    def __init__(self, config: Config, model=None, tokenizer=None, judge=None, prompts: Optional[Sequence] = None,
                 eval_prompts: Optional[Sequence] = None, eval_hook: Optional[Callable] = None,
                 log: Callable[[str], None] = logger.info):
        check_run(config)  # the online section included
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
            if self._adapters_off():
                self._frozen = AdapterDisabledReference(self.policy)
            elif r.path:
                self._frozen = ModelReference(load_causal_lm(r.path, self.config.model, self.config.train.layout).to(_device(self.policy)))
            elif self._initial_copy is not None:
                self._frozen = ModelReference(self._initial_copy)
            else:
                self._frozen = ModelReference(load_causal_lm(self.config.model.name_or_path, self.config.model,
                                                             self.config.train.layout)
                                              .to(_device(self.policy)))
        return self._frozen

    def _adapters_off(self) -> bool:
        """The frozen reference is the policy with its LoRA modules off (as the Trainer's ``auto``)."""
        r = self.config.reference
        return (r.kind == "lora_disabled" or self.strategy.reference == "base"
                or (r.kind == "auto" and not r.path and hasattr(self.policy, "disable_adapter")))

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
        if not resume and is_main_process():
            self._write_config()
        uses_initial = (self.strategy.reference == "initial" or "reference" in self.strategy.sources)
        if uses_initial and not self.config.reference.path and not self._adapters_off() \
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
            if self.loss_needs.data == "lists":
                train_rows = self.strategy.list_rows(groups)
            if is_main_process():
                write_jsonl(os.path.join(rdir, "pairs.jsonl"), info)
                write_jsonl(os.path.join(rdir, "train.jsonl"), train_rows)
                if self.strategy.needs_judge:
                    write_jsonl(os.path.join(rdir, "lists.jsonl"), [
                        {"prompt": g.prompt, "responses": [t for _, t in g.flat()], "scores": g.scores,
                         "sources": [s for s, _ in g.flat()]} for g in groups])
            barrier()
            status, train_metrics = self.train(r, train_rows, groups)
            if status != "completed":
                return status
            stats = self._sample_stats(groups, train_rows)
            stats.update(train_metrics)
        metrics = {"round": r, "strategy": self.strategy.name, **stats,
                   "judge_calls": self.judge_calls - calls_before}
        metrics.update(self.evaluate(r))
        metrics["seconds"] = round(time.time() - started, 2)
        metrics.update(self.strategy.round_metrics())
        if is_main_process():
            save_file(ckpt.trainable_state(self.policy), os.path.join(rdir, "policy.safetensors"))
            self._save_reference(r)
            with open(os.path.join(rdir, "metrics.json"), "w") as handle:
                json.dump(metrics, handle, indent=2)
            append_jsonl(os.path.join(self.run_dir, "rounds.jsonl"), [metrics])
            with open(os.path.join(rdir, "DONE"), "w") as handle:
                handle.write("done\n")
            shutil.rmtree(os.path.join(rdir, "train", "checkpoints"), ignore_errors=True)
        barrier()
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
        """``(texts, token counts, completion ids, prompt ids)`` of ``n`` samples per prompt, shared across
        processes; counts leave out a final EOS, the ids are as generated (:class:`dpokit.sampling.Sampled`)."""
        from ..distributed import gather_objects, rank, shard_for_rank

        local = shard_for_rank(list(prompts))
        texts, counts, ids, prompt_ids = [], [], [], []
        if local:
            rendered, templated = self.render(local)
            sampler = make_sampler(self.online.sampler, model, self.tokenizer,
                                   self.sampling_config(seed + 7919 * rank(), templated), path)
            sampled = sampler.sample_tokens(rendered, n)
            texts, ids, prompt_ids = sampled.texts, sampled.completion_ids, sampled.prompt_ids
            counts = [[len(row) for row in group] for group in sampled.samples(self.tokenizer.eos_token_id)[1]]
        return tuple(gather_objects(part) for part in (texts, counts, ids, prompt_ids))

    def generate(self, r: int, prompts: Sequence[Any], rdir: str, path_name: str = "samples.jsonl",
                 seed_offset: int = 0) -> List[JudgedPrompt]:
        path = os.path.join(rdir, path_name)
        done = {(row["index"], row["source"]): row for row in read_jsonl(path)}
        groups = [JudgedPrompt(i, p) for i, p in enumerate(prompts)]
        size = self.online.generation_batch_size
        for s_index, source in enumerate(self.strategy.sources):
            n = self.strategy.samples_per_prompt(source)
            for start in range(0, len(prompts), size):
                missing = [i for i in range(start, min(start + size, len(prompts))) if (i, source) not in done]
                if not missing:
                    continue
                seed = self.config.train.seed + 1_000_003 * (r + 1) + 9973 * s_index + start + seed_offset
                with self.strategy.sampler_model(source) as model:
                    texts, counts, ids, prompt_ids = self.sample(model, [prompts[i] for i in missing], n, seed,
                                                                 self._sampler_path(r))
                rows = [{"index": i, "source": source, "prompt": prompts[i], "responses": t, "num_tokens": c,
                         "prompt_ids": p, "completion_ids": c_ids}
                        for i, t, c, c_ids, p in zip(missing, texts, counts, ids, prompt_ids)]
                if is_main_process():
                    append_jsonl(path, rows)
                done.update({(row["index"], source): row for row in rows})
        without_ids = 0
        for (i, source), row in done.items():
            if i < len(groups):
                groups[i].add_samples(source, row)
                without_ids += row.get("completion_ids") is None
        if without_ids:
            logger.warning(f"online: {path}: {without_ids} sample row(s) carry no token ids (written by an older "
                           "version); their responses are trained on their re-tokenized text")
        return groups

    def _sampler_path(self, r: int) -> Optional[str]:
        """Where the sampler model's weights are on disk (only an engine such as vLLM reads them)."""
        if self.online.sampler == "hf":
            return None
        path = os.path.join(self.round_dir(r), "sampler-model")
        if is_main_process() and not os.path.exists(os.path.join(path, "config.json")):
            self.save_model(self.policy, path)
        barrier()
        return path

    # -- judge ----------------------------------------------------------------------------------
    def score(self, groups: Sequence[JudgedPrompt], path: str) -> None:
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
            if is_main_process():
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
            data=dataclasses.replace(c.data, train=data_path, kind=self.loss_needs.data, limit=None),
            loss=dict(self.loss_section),
            reference=dataclasses.replace(c.reference, precompute=False),
            train=dataclasses.replace(c.train, output_dir=output_dir, seed=c.train.seed + r, **train_overrides),
            online=OnlineConfig(),
        )

    def make_trainer(self, config: Config, callbacks: Sequence[Callable] = (), **options):
        """The round's Trainer; ``options``: the strategy's constructor arguments (scorer_wrapper, param_groups)."""
        return Trainer(config, model=self.policy, tokenizer=self.tokenizer,
                       callbacks=list(self.strategy.callbacks()) + list(callbacks), reference=self.round_reference(),
                       **options)

    def train(self, r: int, rows: List[dict], groups: Sequence[JudgedPrompt]) -> Tuple[str, Dict[str, Any]]:
        if not rows:
            self.log(f"online round {r + 1}: no usable pairs (every prompt's samples tie); the policy is unchanged")
            return "completed", {"trained": False}
        rdir = self.round_dir(r)
        config = self.round_config(r, os.path.join(rdir, "train.jsonl"), os.path.join(rdir, "train"))
        trainer = self.make_trainer(config, **self.strategy.trainer_options(rows, groups))
        self.strategy.prepare_trainer(trainer)
        resume = ckpt.latest_valid_checkpoint(trainer.checkpoint_dir) is not None
        result = trainer.fit(resume=resume)
        self.policy = trainer.accelerator.unwrap_model(trainer.model)
        if result["status"] != "completed":
            return result["status"], {}
        self.strategy.after_train(trainer)
        return "completed", last_train_metrics(os.path.join(rdir, "train", "metrics.jsonl"), result)

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, r: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.eval_prompts and self.judge is not None:
            n = self.online.eval_samples_per_prompt
            with self.strategy.sampler_model("policy") as model:
                texts = self.sample(model, self.eval_prompts, n, self.config.train.seed + 424242)[0]
            groups = [JudgedPrompt(i, p, {"policy": t}) for i, (p, t) in enumerate(zip(self.eval_prompts, texts))]
            calls = self.judge_calls
            scored = os.path.join(self.round_dir(r), "eval_scores.jsonl")
            if os.path.exists(scored) and is_main_process():
                os.remove(scored)
            barrier()
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
    def _sample_stats(groups: Sequence[JudgedPrompt], rows: Sequence[dict]) -> Dict[str, Any]:
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
        with open(os.path.join(self.run_dir, "config.yaml"), "w") as handle:
            yaml.safe_dump(self.config.to_yaml_dict(), handle, sort_keys=False)

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
        return ckpt.save_model_dir(model, self.tokenizer, path)

    def save_final(self, model) -> str:
        path = os.path.join(self.run_dir, "final")
        if is_main_process():
            self.save_model(model, path)
        barrier()
        return path


# ------------------------------------------------------------------------------------------------
def _device(model) -> torch.device:
    return next(model.parameters()).device


def run_online(config: Config, resume: bool = False, **kwargs) -> Dict[str, Any]:
    """``dpokit train`` with an ``online:`` section."""
    return OnlineLoop(config, **kwargs).run(resume=resume)
