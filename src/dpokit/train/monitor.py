"""Training-time monitoring of over-optimisation indicators (``train.monitor`` in the config).

``train.monitor: true`` (or a mapping of the options below) registers :class:`Monitor` as a trainer
callback. Every ``every`` optimizer steps (default: ``train.eval_every``, else a tenth of the run) and
at the last step it measures, on up to ``examples`` held-out pairs (the eval set; the first training
pairs when there is none), and logs to ``metrics.jsonl`` with the ``monitor/`` prefix:

====================================  =============================================================
``monitor/accuracy``, ``/margin``      implicit-reward accuracy and mean ``beta * margin``
``monitor/drift_chosen``               mean ``log pi(y_w|x) - log pi_ref(y_w|x)`` (sequence sums)
``monitor/drift_rejected``, ``_unseen`` the same for rejected responses and for responses to other
                                       prompts (the chosen response of the previous pair)
``monitor/logps_chosen``               mean ``log pi(y_w|x)``
``monitor/topk_mass_chosen``,          Shi et al. top-k mass / top-k entropy (bits) of the policy's
``monitor/topk_entropy_chosen``        next-token distributions along the chosen responses
====================================  =============================================================

With ``samples > 0`` (the default when a ``judge`` is given) it also samples answers to up to
``prompts`` of those prompts and logs ``monitor/judge_reward`` (with a judge), ``monitor/kl`` (sum
over the answer of the exact next-token KL(policy || reference)), ``monitor/length``,
``monitor/distinct_2``, ``monitor/topk_mass`` and ``monitor/topk_entropy`` (along the answers).
These points make the reward-vs-KL frontier of ``dpokit report``.

Without a reference model in memory (reference-free losses) the drifts are measured from the first
monitored step instead of from the reference; with precomputed reference log-probs the unseen drift
and KL are skipped.

Warnings (each logged once, and listed in ``monitor/warnings`` on the line where it first fires):

* ``likelihood_displacement``: ``drift_chosen < -chosen_drop`` while accuracy is above its first
  monitored value: the chosen responses lose likelihood while the preference is learnt, so the mass
  goes to responses outside the data (3D-properties, Yan et al. 2024);
* ``topk_entropy_reversal``: the top-k entropy (of answers when sampled, else along the chosen
  responses) fell more than ``entropy_drop`` (relative) below its highest monitored value after
  rising above its first value: Shi et al. 2024 report this reversal at the win-rate peak of DPO/IPO;
* ``topk_mass_drop``: top-k mass fell more than ``mass_drop`` (relative) below its first value
  (flattening distributions, the hinge-loss failure mode in Shi et al.);
* ``kl_high``: ``monitor/kl > kl_max`` (when ``kl_max`` is set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

import torch

from ..eval.diagnostics import completion_statistics, has_reference_model, sample_from_ids
from ..preference.judges import build_judge, score_responses
from ..eval.metrics import distinct_n
from ..eval.preference import preference_accuracy

logger = logging.getLogger("dpokit")


@dataclass
class MonitorOptions:
    every: int = 0  # 0: train.eval_every, else a tenth of the run
    examples: int = 64
    k: int = 10
    batch_size: int = 16
    beta: Optional[float] = None  # default: the loss's beta, else 0.1
    judge: Any = None  # 'module:function', a built-in name, or a dpokit.preference.judges mapping {kind: ...}
    samples: Optional[int] = None  # answers per prompt; default 1 with a judge, else 0
    prompts: int = 32
    max_new_tokens: int = 32
    temperature: float = 1.0
    seed: int = 0
    chosen_drop: float = 1.0  # nats (sequence log-likelihood) below the reference
    entropy_drop: float = 0.1  # relative
    mass_drop: float = 0.1  # relative
    kl_max: Optional[float] = None

    @classmethod
    def parse(cls, value: Any) -> "MonitorOptions":
        from ..errors import ConfigError

        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"train.monitor: expected true or a mapping of options, got {value!r}")
        names = [f.name for f in fields(cls)]
        for key in value:
            if key not in names:
                raise ConfigError(f"unknown key 'train.monitor.{key}'; valid keys: {', '.join(names)}")
        options = cls(**value)
        for name in ("every", "examples", "k", "batch_size", "prompts", "max_new_tokens"):
            number = getattr(options, name)
            if isinstance(number, bool) or not isinstance(number, int) or number < (0 if name == "every" else 1):
                raise ConfigError(f"train.monitor.{name}: expected a positive integer, got {number!r}")
        if isinstance(options.judge, str):
            try:
                build_judge(options.judge)
            except (ValueError, ImportError, FileNotFoundError) as err:
                raise ConfigError(f"train.monitor.judge: {err}") from None
        elif options.judge is not None and not isinstance(options.judge, dict):
            raise ConfigError(f"train.monitor.judge: expected 'module:function', a built-in name or a mapping "
                              f"such as {{kind: reward_model, path: ...}}, got {options.judge!r}")
        return options


def monitor_callback(value: Any) -> "Monitor":
    """The trainer callback for a ``train.monitor`` config value (options validated here)."""
    return Monitor(MonitorOptions.parse(value))


class Monitor:
    def __init__(self, options: MonitorOptions):
        self.options = options
        self.judge = None
        if options.judge:  # a name, 'module:function' or {kind: reward_model, path: ...}
            self.judge = build_judge(options.judge)
        self.samples = options.samples if options.samples is not None else (1 if self.judge else 0)
        self.history: List[Dict[str, float]] = []
        self.baseline: Dict[str, float] = {}
        self.fired: set = set()
        self.warnings: List[Dict[str, Any]] = []

    # -- scheduling --------------------------------------------------------------------------------
    def interval(self, trainer) -> int:
        return self.options.every or trainer.config.train.eval_every or max(1, trainer.total_steps // 10)

    def __call__(self, trainer, step: int) -> None:
        if step % self.interval(trainer) and step != trainer.total_steps:
            return
        record = self.measure(trainer)
        new = self.check(record)
        if new:
            record["monitor/warnings"] = new
        self.log(trainer, dict(record, step=step))

    @staticmethod
    def log(trainer, record: Dict[str, Any]) -> None:
        """Like ``Trainer._log`` (metrics.jsonl and trackers, main process only), with a line of its own."""
        if not trainer.is_main:
            return
        trainer.metrics.write(record)
        if trainer.accelerator.log_with:
            trainer.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if not trainer.config.train.progress_bar:
            from .logging import format_metrics

            keys = ("monitor/accuracy", "monitor/drift_chosen", "monitor/topk_entropy", "monitor/kl",
                    "monitor/judge_reward")
            logger.info("step %s %s", record["step"], format_metrics(record, keys))

    # -- measurement -------------------------------------------------------------------------------
    def _examples(self, trainer) -> list:
        pool = trainer.eval_examples or trainer.train_examples
        return list(pool[:self.options.examples])

    @torch.no_grad()
    def measure(self, trainer) -> Dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            with trainer.accelerator.autocast():
                record = self._pair_metrics(trainer, model)
                if self.samples > 0:
                    record.update(self._sample_metrics(trainer, model))
        finally:
            model.train(was_training)
        return record

    def _beta(self, trainer) -> float:
        if self.options.beta is not None:
            return self.options.beta
        return float(getattr(trainer.loss_fn, "hparams", {}).get("beta", 0.1) or 0.1)

    def _pair_metrics(self, trainer, model) -> Dict[str, Any]:
        from ..data import collate

        examples = self._examples(trainer)
        if not examples:
            return {}
        pad = trainer.tokenizer.pad_token_id
        reference = trainer.reference if has_reference_model(trainer.reference) else None
        pairs = all(len(ex.completions) == 2 for ex in examples)
        unseen = pairs and reference is not None and len(examples) > 1
        groups = [(ex.prompt_ids, list(ex.completions) + ([examples[i - 1].completions[0]] if unseen else []))
                  for i, ex in enumerate(examples)]
        width = len(groups[0][1])
        stats = completion_statistics(model, groups, pad, reference, self.options.k, self.options.batch_size)
        logps, lengths = stats["logps"], stats["lengths"]
        ref_logps = stats.get("ref_logps")
        if ref_logps is None and trainer.reference is not None:  # precomputed reference log-probs
            parts = []
            for start in range(0, len(examples), self.options.batch_size):
                batch = collate(examples[start:start + self.options.batch_size], "pairs" if pairs else "unpaired")
                parts.append(trainer.reference.token_logprobs(trainer.scorer, batch).sums.float().cpu())
            ref_logps = torch.cat(parts)
        chosen = slice(0, None, width)
        record: Dict[str, Any] = {
            "monitor/logps_chosen": float(logps[chosen].mean()),
            "monitor/topk_mass_chosen": float(stats["topk_mass"][chosen].sum() / lengths[chosen].sum().clamp_min(1)),
            "monitor/topk_entropy_chosen": float(stats["topk_entropy"][chosen].sum() / lengths[chosen].sum().clamp_min(1)),
        }
        names = ["chosen", "rejected", "unseen"][:width] if pairs else ["chosen"]
        for offset, name in enumerate(names):
            rows = slice(offset, None, width)
            if ref_logps is not None:
                record[f"monitor/drift_{name}"] = float((logps[rows] - ref_logps[rows]).mean())
            else:  # reference-free: drift from the first monitored step
                value = float(logps[rows].mean())
                self.baseline.setdefault(name, value)
                record[f"monitor/drift_{name}"] = value - self.baseline[name]
        if pairs:
            if ref_logps is not None:
                margins = (logps[0::width] - ref_logps[0::width]) - (logps[1::width] - ref_logps[1::width])
            else:
                margins = logps[0::width] / lengths[0::width].clamp_min(1) - logps[1::width] / lengths[1::width].clamp_min(1)
            margins = self._beta(trainer) * margins
            record["monitor/accuracy"] = preference_accuracy(margins)
            record["monitor/margin"] = float(margins.mean())
        return record

    def _sample_metrics(self, trainer, model) -> Dict[str, Any]:
        tokenizer = trainer.tokenizer
        seen, prompts = set(), []
        for ex in self._examples(trainer):
            if tuple(ex.prompt_ids) not in seen:
                seen.add(tuple(ex.prompt_ids))
                prompts.append(list(ex.prompt_ids))
        prompts = prompts[:self.options.prompts]
        if not prompts:
            return {}
        samples = sample_from_ids(model, tokenizer, prompts, self.samples, self.options.max_new_tokens,
                                  self.options.temperature, 1.0, self.options.batch_size, self.options.seed)
        eos = tokenizer.eos_token_id
        groups = [(p, [s.completion(eos) for s in group]) for p, group in zip(prompts, samples)]
        reference = trainer.reference if has_reference_model(trainer.reference) else None
        stats = completion_statistics(model, groups, tokenizer.pad_token_id, reference, self.options.k,
                                      self.options.batch_size)
        answers = [s for group in samples for s in group]
        record: Dict[str, Any] = {
            "monitor/length": sum(len(s.ids) for s in answers) / len(answers),
            "monitor/distinct_2": distinct_n([s.text for s in answers], 2),
            "monitor/topk_mass": float(stats["topk_mass"].sum() / stats["lengths"].sum().clamp_min(1)),
            "monitor/topk_entropy": float(stats["topk_entropy"].sum() / stats["lengths"].sum().clamp_min(1)),
        }
        if "kl" in stats:
            record["monitor/kl"] = float(stats["kl"].mean())
        if self.judge is not None:
            texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
            scores = score_responses(self.judge, [t for t, group in zip(texts, samples) for _ in group],
                               [s.text for s in answers])
            record["monitor/judge_reward"] = sum(scores) / len(scores)
        return record

    # -- warnings ----------------------------------------------------------------------------------
    def check(self, record: Dict[str, Any]) -> List[str]:
        opts = self.options
        first = self.history[0] if self.history else record
        self.history.append(record)
        new: List[str] = []

        def fire(code: str, message: str) -> None:
            if code in self.fired:
                return
            self.fired.add(code)
            new.append(code)
            self.warnings.append({"code": code, "message": message})
            logger.warning("monitor: %s", message)

        drift, accuracy = record.get("monitor/drift_chosen"), record.get("monitor/accuracy")
        if drift is not None and accuracy is not None and drift < -opts.chosen_drop \
                and accuracy > first.get("monitor/accuracy", 0.5):
            fire("likelihood_displacement",
                 f"the chosen responses' log-likelihood fell {-drift:.2f} nats below the reference while preference "
                 f"accuracy rose to {accuracy:.3f}: probability mass is moving to responses outside the data "
                 "(consider an SFT term such as 'dpo + 0.2*sft', a larger beta or a lower learning rate)")
        entropy_key = "monitor/topk_entropy" if "monitor/topk_entropy" in record else "monitor/topk_entropy_chosen"
        values = [h[entropy_key] for h in self.history if entropy_key in h]
        if len(values) >= 3:
            peak = max(values)
            if peak > values[0] and values[-1] < (1.0 - opts.entropy_drop) * peak:
                fire("topk_entropy_reversal",
                     f"top-{opts.k} entropy turned down from {peak:.3f} to {values[-1]:.3f} bits after rising: the "
                     "reversal Shi et al. (2024) observe at the win-rate peak; consider stopping at the peak")
        mass_key = "monitor/topk_mass" if "monitor/topk_mass" in record else "monitor/topk_mass_chosen"
        masses = [h[mass_key] for h in self.history if mass_key in h]
        if len(masses) >= 2 and masses[-1] < (1.0 - opts.mass_drop) * masses[0]:
            fire("topk_mass_drop",
                 f"top-{opts.k} probability mass fell from {masses[0]:.3f} to {masses[-1]:.3f}: the next-token "
                 "distributions flatten (an over-optimisation signal in Shi et al. 2024)")
        kl = record.get("monitor/kl")
        if opts.kl_max is not None and kl is not None and kl > opts.kl_max:
            fire("kl_high", f"KL(policy || reference) on sampled answers is {kl:.2f} nats, above kl_max={opts.kl_max}")
        return new
