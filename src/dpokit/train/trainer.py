"""The training loop. It knows no method by name: a loss is a callable with ``needs``.

    for each optimizer step:
        for each micro-batch of the accumulation window:
            inputs = scorer.loss_inputs(policy, batch, reference)   # only what the loss needs
            loss   = loss_fn(inputs).loss.mean() / window_size
            backward
        clip, step (skipped and counted when non-finite), schedule, log, evaluate, checkpoint
        callbacks (monitor, TR-DPO reference sync, curriculum: dpokit.train.callbacks)

``train.max_steps`` wins over ``train.epochs``: the data order continues into the next epoch.
Data order depends only on (seed, epoch), checkpoints hold the position in the epoch, the RNG states
and the loss state, so a resumed run ends with the same weights as an uninterrupted one.
SIGINT/SIGTERM finish the current step, write a checkpoint and return cleanly.

Extension points (what online strategies use; nothing else of the trainer is rewritten from outside):
``scorer_wrapper`` wraps the scorer, ``param_groups(model)`` splits the trainable parameters into
optimizer groups, and :meth:`Trainer.set_train_examples`, :meth:`Trainer.tokenize`,
:meth:`Trainer.set_base_lrs` and :meth:`Trainer.log` are public.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import yaml

from .. import distributed as dist_utils
from ..config import Config
from ..data import EpochBatchOrder
from ..errors import ConfigError, NonFiniteError
from ..families import model_family
from ..losses import LossInputs
from ..paths import safe_join
from ..preflight import check_run
from ..reference import AdapterDisabledReference, build_reference
from ..scoring import build_scorer
from .callbacks import config_callbacks
from .checkpointing import CheckpointingMixin
from .curriculum import CurriculumBatchOrder, curriculum_reference_callback
from .logging import MetricsLog, available_trackers, format_metrics
from .signals import stop_on_signals

logger = logging.getLogger("dpokit")

Callback = Callable[["Trainer", int], None]


class Trainer(CheckpointingMixin):
    def __init__(self, config: Config, model=None, tokenizer=None, callbacks: Optional[List[Callback]] = None,
                 reference=None, scorer_wrapper: Optional[Callable] = None,
                 param_groups: Optional[Callable[[torch.nn.Module], List[Dict[str, Any]]]] = None):
        """``reference``: a ready :mod:`dpokit.reference` object instead of one built from
        ``config.reference`` (the online round loop passes the previous round's policy this way).
        ``scorer_wrapper(scorer) -> scorer`` and ``param_groups(model) -> [{"params": [...], ...}]``:
        see the module docstring."""
        self.config = config
        plan = check_run(config)  # every cross-module check, before any model loads
        if plan.loop is not None:
            raise ConfigError(f"data.kind {config.data.kind!r} is not trained by the Trainer but by "
                              f"{plan.loop.__name__}.run (dpokit train dispatches to it)")
        self.loss_fn = plan.loss
        self.callbacks: List[Callback] = list(callbacks or []) + config_callbacks(config)  # options checked here
        self._setup_accelerator()
        self._policy_from_path = model is None
        self.family = model_family(config.model.kind)  # what model.kind loads, reads, batches and saves
        if model is None:
            model, tokenizer = self.family.load_policy(config)
        self.tokenizer = tokenizer
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)  # may exceed len(tokenizer)
        # the scorer: train.scorer when given (steps: step-level losses), else the model family's
        self.scorer = build_scorer(config, self.loss_fn.needs, tokenizer, model,
                                   kind=config.train.scorer or self.family.scorer)
        if scorer_wrapper is not None:
            self.scorer = scorer_wrapper(self.scorer)
        self._check_scorer_engine()  # before data, reference and training
        self._load_data()  # train_examples, eval_examples, data_plan, data_report
        if reference is None:
            reference = build_reference(config, self.loss_fn.needs, model, self.accelerator, self.scorer,
                                        self.train_examples + self.eval_examples, self._policy_from_path,
                                        self.scorer.external_parameters)
        self.reference = reference
        self._setup_order()
        self._setup_optimization(model, param_groups)
        self.stop_requested = False
        self._updating = False  # True while optimizer/scheduler state changes within a step
        self._saved: Optional[tuple] = None  # (step, path) of the last checkpoint written
        self._bad_batches: List[str] = []
        self.state: Dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "tokens": 0, "bad_steps": 0,
                                      "skipped_steps": 0}

    # ---- setup --------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        t = self.config.train
        trackers = available_trackers(t.report_to)
        self.accelerator = Accelerator(
            mixed_precision=dist_utils.resolve_mixed_precision(t.mixed_precision), log_with=trackers or None,
            project_dir=t.output_dir,
            cpu=dist_utils.cpu_only(),  # torchrun on CPUs: a gloo group rather than W lone processes
        )
        dist_utils.check_launch(self.accelerator)
        self.engine_kind = dist_utils.engine_kind(self.accelerator)  # single | ddp | fsdp | fsdp2 | deepspeed
        # FSDP and DeepSpeed split model/optimizer state over processes: checkpoints go through accelerate
        self.sharded_state = self.engine_kind in ("fsdp", "fsdp2", "deepspeed")
        set_seed(t.seed)
        self.output_dir = t.output_dir
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
        self.metrics = MetricsLog(safe_join(self.output_dir, "metrics.jsonl"), enabled=self.is_main)

    def _setup_order(self) -> None:
        t = self.config.train
        # train.batch_size is per process: the order is cut into global batches of batch_size * W
        # (what one process with that batch size sees) and process r trains on slice r of each.
        self.global_batch_size = t.batch_size * self.accelerator.num_processes
        if self.data_plan.stages is not None:  # Curry-DPO: stage-ordered batches, reference <- policy per stage
            self.order = CurriculumBatchOrder([self.data_plan.stages[ex.index] for ex in self.train_examples],
                                              self.global_batch_size, t.seed, self.data_plan.num_stages,
                                              self.data_plan.epochs_per_stage)
            self.callbacks.append(curriculum_reference_callback(self.order))
        else:
            self.order = EpochBatchOrder([ex.num_tokens for ex in self.train_examples], self.global_batch_size,
                                         t.seed, t.group_by_length)
        self._plan_start = 0  # sample position the current epoch's plan starts at (a resume under another W)
        self._plan: Optional[tuple] = None  # (epoch, EpochPlan) of the epoch being trained
        self.micro_per_epoch = len(self.epoch_plan(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.grad_accum)
        self.total_steps = t.max_steps or self.steps_per_epoch * t.epochs

    def _setup_optimization(self, model, param_groups) -> None:
        from transformers import get_scheduler

        t = self.config.train
        groups = param_groups(model) if param_groups else [{"params": [p for p in model.parameters()
                                                                      if p.requires_grad]}]
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                           weight_decay=t.weight_decay)
        warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * self.total_steps)
        name = {"constant": "constant_with_warmup"}.get(t.scheduler, t.scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total_steps)
        dist_utils.fill_deepspeed_auto(self.accelerator, t.batch_size, t.max_grad_norm)
        if self.engine_kind == "deepspeed":  # DeepSpeed steps the scheduler inside its engine
            self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, self.optimizer,
                                                                                  self.scheduler)
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        dist_utils.register_external_parameters(self.accelerator, self.model, self.scorer.external_parameters(model))
        if isinstance(self.reference, AdapterDisabledReference):  # its forwards go through the wrapper too
            dist_utils.link_wrapper(self.reference.model, self.model)
        if self.config.model.compile:
            self.model = torch.compile(self.model)

    def tokenize(self, examples):
        """``(tokenized examples, report)`` with the run's data settings."""
        d = self.config.data
        return self.family.tokenize(examples, self.tokenizer, d.max_length, d.max_prompt_length, d.truncation_mode,
                                    d.append_eos, d.on_empty_completion, self.vocab_size)

    def set_train_examples(self, examples: Sequence) -> None:
        """Replace the training examples by as many new ones (same positions: the data order, the
        schedule and a checkpoint's position stay valid); online rounds refresh their pairs this way."""
        if len(examples) != len(self.train_examples):
            raise ValueError(f"set_train_examples: {len(examples)} examples for {len(self.train_examples)} positions")
        self.train_examples[:] = list(examples)

    def set_base_lrs(self, base_lrs: Sequence[float]) -> None:
        """New peak learning rates per optimizer group; the schedule's current factor applies at once."""
        scheduler, optimizer = self.scheduler, getattr(self.optimizer, "optimizer", self.optimizer)
        if len(base_lrs) != len(optimizer.param_groups) or not hasattr(scheduler, "lr_lambdas"):
            raise ValueError("set_base_lrs: one learning rate per optimizer group, with a LambdaLR-based schedule "
                             "(cosine, linear, constant)")
        scheduler.base_lrs = list(base_lrs)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(max(scheduler.last_epoch, 0))

    def _load_data(self):
        self.train_examples, self.eval_examples, self.data_plan, self.data_report = self.family.load_data(self)
        logger.info("data: %s; %s", self.data_report["load"], self.data_report["tokenize"])
        labels = [ex.label for ex in self.train_examples] if self.loss_fn.needs.data == "unpaired" else None
        for message in self.loss_fn.check_data(labels):  # e.g. KTO's class balance
            logger.warning(message)

    # ---- the loop -----------------------------------------------------------------------------
    def compute_loss(self, batch, training: bool = True):
        self.loss_fn.training = training
        with self.accelerator.autocast():
            inputs: LossInputs = self.scorer.loss_inputs(self.model, batch, self.reference)
            out = self.loss_fn(inputs)
        return out

    def _batch(self, positions, examples):
        return self.family.collate(self, [examples[i] for i in positions], self.model.training)

    def epoch_plan(self, epoch: int) -> "dist_utils.EpochPlan":
        key = (epoch, self._plan_start)
        if self._plan is None or self._plan[0] != key:
            plan = dist_utils.epoch_plan(self.order.batches(epoch), self.accelerator.num_processes,
                                         self._plan_start, self.global_batch_size)
            if plan.dropped:
                logger.info("epoch %d: %d example(s) in a final global batch smaller than the %d processes are "
                            "left out this epoch", epoch, plan.dropped, self.accelerator.num_processes)
            self._plan = (key, plan)
        return self._plan[1]

    def _samples_done(self) -> int:
        """Position in the current epoch's sample order (the data position a checkpoint stores)."""
        return self.epoch_plan(self.state["epoch"]).samples_before(self.state["micro"])

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        t = self.config.train
        for name in ("checkpoints", "final"):  # a link leading out of the run directory: refuse now, not at the end
            safe_join(self.output_dir, name)
        if resume:
            self._resume()
        elif self.is_main:
            with open(safe_join(self.output_dir, "config.yaml"), "w") as handle:
                yaml.safe_dump(self.config.to_yaml_dict(), handle, sort_keys=False)
        if self.accelerator.log_with:
            self.accelerator.init_trackers("dpokit", config=self.config.flat())
        epochs = math.inf if t.max_steps else t.epochs  # max_steps wins: the order continues into more epochs
        progress = self._progress_bar()
        start_time, start_step = time.time(), self.state["step"]
        try:
            with stop_on_signals(self):
                while self.state["step"] < self.total_steps and self.state["epoch"] < epochs:
                    micro_batches = self.epoch_plan(self.state["epoch"]).batches
                    while self.state["micro"] < len(micro_batches) and self.state["step"] < self.total_steps:
                        window = micro_batches[self.state["micro"]:self.state["micro"] + t.grad_accum]
                        record = self._optimizer_step(window)
                        self.state["micro"] += len(window)
                        self.state["step"] += 1
                        step = self.state["step"]
                        progress.update(1)
                        if step % t.log_every == 0 or step == self.total_steps:
                            record.update(step=step, lr=self.scheduler.get_last_lr()[0], tokens=self.state["tokens"],
                                          epoch=self.state["epoch"] + self.state["micro"] / len(micro_batches),
                                          steps_per_s=(step - start_step) / max(time.time() - start_time, 1e-9))
                            self.log(record)
                            progress.set_postfix_str(format_metrics(record, ("loss", "rewards/accuracies")))
                        self._check_bad_steps()
                        for callback in self.callbacks:
                            callback(self, step)
                        if t.eval_every and step % t.eval_every == 0 and self.eval_examples:
                            self.log(dict(self.evaluate(), step=step))
                        if t.save_every and step % t.save_every == 0:
                            self._periodic_checkpoint()
                        if self.stop_requested:
                            self.save_checkpoint()
                            return {"status": "interrupted", **self.state}
                    if self.state["micro"] >= len(micro_batches):
                        self.state.update(epoch=self.state["epoch"] + 1, micro=0)
                        self._plan_start = 0
            if self.eval_examples and not (t.eval_every and self.state["step"] % t.eval_every == 0):
                self.log(dict(self.evaluate(), step=self.state["step"]))
            self.save_checkpoint()
            self.save_final()
        except NonFiniteError:
            self.save_checkpoint()
            raise
        except Exception as err:
            # Outside the parameter update the weights and the state agree (the failed step left
            # only gradients, which checkpoints do not hold): save them so --resume loses nothing.
            # One process only: with several, the others may be waiting in a collective operation.
            if not self._updating and self.state["step"] > 0 and self.accelerator.num_processes == 1:
                try:
                    path = self.save_checkpoint()
                    logger.error("%s during training: checkpoint of step %d written to %s", type(err).__name__,
                                 self.state["step"], path)
                except Exception as save_err:  # keep the original error
                    logger.error("could not write a checkpoint after %s: %s", type(err).__name__, save_err)
            raise
        finally:
            progress.close()
            for tracker in self.accelerator.trackers:  # not end_training(): that also ends the process
                tracker.finish()                        # group, which later trainers (online rounds) reuse
        return {"status": "completed", **self.state}

    def _optimizer_step(self, window: List[List[int]]) -> Dict[str, Any]:
        world = self.accelerator.num_processes
        sums: Dict[str, float] = {"loss": 0.0, "tokens": 0.0}  # this process's weighted share of each value
        weights: Dict[str, float] = {"loss": 1.0 / world, "tokens": 1.0 / world}
        for k, global_batch in enumerate(window):
            positions = dist_utils.shard_for_rank(global_batch, self.accelerator.process_index, world)
            batch = self._batch(positions, self.train_examples)
            sync = k == len(window) - 1
            self.accelerator.sync_gradients = sync  # where DeepSpeed's accumulation window ends
            # Every example weighs 1 / (global batch * window), as in one process with the whole global
            # batch; the engines average gradients over the W processes, hence the factor W.
            share = 1.0 / (len(global_batch) * len(window))
            context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
            with context:
                out = self.compute_loss(batch, training=True)
                loss = out.loss.sum() * share
                self.accelerator.backward(loss * world)
            sums["loss"] += float(loss.detach())  # the weights of loss and tokens add up to 1: plain sums
            sums["tokens"] += batch.num_tokens
            for key, value in out.metrics.items():  # example-weighted means over the global batch
                sums[key] = sums.get(key, 0.0) + float(value) * len(positions) * share
                weights[key] = weights.get(key, 0.0) + len(positions) * share
        reduced = dist_utils.reduce_weighted(sums, weights, self.accelerator.device)  # one all-reduce
        mean_loss, tokens = reduced.pop("loss", float("nan")), int(round(reduced.pop("tokens", 0.0)))
        sums = reduced
        # The gradient norm is checked even without clipping (max_norm=inf only measures it); with
        # fp16 this also unscales the gradients. Both checks are global, so every process agrees.
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(),
                                                     self.config.train.max_grad_norm or float("inf"))
        loss_finite = math.isfinite(mean_loss)  # the reduced loss: non-finite if any process's is
        finite = loss_finite and (grad_norm is None or math.isfinite(float(grad_norm)))
        self._updating = True
        if finite:
            self.optimizer.step()
            self.state["bad_steps"] = 0
        else:
            self.state["skipped_steps"] += 1
            scaler = getattr(self.accelerator, "scaler", None)
            overflow = scaler is not None and loss_finite and scaler.get_scale() >= 1.0
            if scaler is not None:
                try:
                    scaler.update()  # fp16 loss scaling: lower the scale after inf/NaN gradients
                except (AssertionError, RuntimeError):  # no inf check was recorded this step
                    pass
            if overflow:  # the loss scale was too high: routine for fp16, not a fault of the run
                logger.info("fp16 gradient overflow at step %d: step skipped, loss scale lowered to %g",
                            self.state["step"] + 1, scaler.get_scale())
            else:
                self.state["bad_steps"] += 1
                self._bad_batches = [self.train_examples[i].location for positions in window for i in positions]
                logger.warning("non-finite loss or gradient at step %d: step skipped (%d in a row; batch starts at "
                               "%s)", self.state["step"] + 1, self.state["bad_steps"],
                               ", ".join(self._bad_batches[:3]))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["tokens"] += tokens
        self._updating = False
        record = {"loss": mean_loss, **sums, "skipped_steps": self.state["skipped_steps"]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        return record

    def _check_bad_steps(self) -> None:
        """Stop (with a checkpoint, written by ``fit``) after ``max_bad_steps`` non-finite steps in a row."""
        bad = self.state["bad_steps"]
        if bad >= self.config.train.max_bad_steps:
            shown = ", ".join(self._bad_batches[:5]) + (" ..." if len(self._bad_batches) > 5 else "")
            raise NonFiniteError(
                f"{bad} consecutive steps (up to step {self.state['step']}) had a non-finite loss or gradient and "
                f"were skipped; the run stopped with a checkpoint of the last good weights (resume with --resume "
                f"after a fix). Last bad batch: {shown}. Lower train.lr or train.max_grad_norm, check those "
                "records, or use bf16 instead of fp16."
            )

    @torch.no_grad()
    def evaluate(self, examples=None) -> Dict[str, float]:
        """Mean eval loss and metrics over the eval set (``eval/`` prefix); loss state is not updated."""
        examples = examples if examples is not None else self.eval_examples
        self.model.eval()
        size = self.config.train.eval_batch_size or self.config.train.batch_size
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        totals: Dict[str, float] = {}
        counts: Dict[str, float] = {}
        # Every process evaluates its slice of each global eval batch (collective: all call this);
        # a process whose slice is empty still runs one example, which is not counted.
        for start in range(0, len(examples), size * world):
            global_batch = list(range(start, min(start + size * world, len(examples))))
            positions = dist_utils.shard_for_rank(global_batch, rank, world)
            n = len(positions)
            batch = self._batch(positions or global_batch[:1], examples)
            out = self.compute_loss(batch, training=False)
            values = {"loss": out.loss.sum().item() / max(n, 1), **{k: float(v) for k, v in out.metrics.items()}}
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value * n
                counts[key] = counts.get(key, 0.0) + n
        self.model.train()
        return {f"eval/{k}": v for k, v in dist_utils.reduce_weighted(totals, counts, self.accelerator.device).items()}

    # ---- io ---------------------------------------------------------------------------------
    def log(self, record: Dict[str, Any], line_keys: Optional[Sequence[str]] = None) -> None:
        """One record (with ``step``) to metrics.jsonl and the trackers, on the main process; without a
        progress bar also as a log line (``line_keys``: the metrics that line shows)."""
        if not self.is_main:
            return
        self.metrics.write(record)
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if not self.config.train.progress_bar:
            logger.info("step %s %s", record.get("step"), format_metrics(record, line_keys))

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                    disable=not (self.is_main and self.config.train.progress_bar), dynamic_ncols=True)
