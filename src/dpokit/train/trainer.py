"""The training loop. It knows no method by name: a loss is a callable with ``needs``.

    for each optimizer step:
        for each micro-batch of the accumulation window:
            inputs = engine.loss_inputs(policy, batch, reference)   # only what the loss needs
            loss   = loss_fn(inputs).loss.mean() / window_size
            backward
        clip, step (skipped and counted when non-finite), schedule, log, evaluate, checkpoint
        callbacks (e.g. TR-DPO reference sync)

Data order depends only on (seed, epoch), checkpoints hold the position in the epoch, the RNG states
and the loss state, so a resumed run ends with the same weights as an uninterrupted one.
SIGINT/SIGTERM finish the current step, write a checkpoint and return cleanly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import yaml

from .. import distributed as dist_utils
from ..config import Config, ConfigError, build_loss
from ..data import EpochBatchOrder, collate, load_examples, tokenize_examples
from ..data.build import prepare_examples
from ..data.formats import LoadReport
from ..scoring.lm.engine import LogProbEngine
from ..losses import LossInputs
from ..models import load_causal_lm, load_policy
from ..paths import safe_join
from ..reference import AdapterDisabledReference, ModelReference
from . import checkpoint as ckpt
from .curriculum import CurriculumBatchOrder, curriculum_reference_callback
from .logging import MetricsLog, available_trackers, format_metrics

logger = logging.getLogger("dpokit")

Callback = Callable[["Trainer", int], None]


def _has_gpu() -> bool:
    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mps"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        try:
            if backend is not None and backend.is_available():
                return True
        except Exception:  # a backend stub without a working runtime
            pass
    return False


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 where the GPU has it, else fp16 (with loss scaling), none on CPU. An explicit
    ``fp16`` without a GPU is an error: fp16 loss scaling runs only on GPUs, and fp16 without it
    underflows; this is checked when the trainer starts, before any model loads."""
    if setting == "fp16" and not _has_gpu():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (its loss scaling runs only there) and none "
                          "is available; use bf16, no, or auto (which picks for the machine)")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class NonFiniteError(RuntimeError):
    pass


class Trainer:
    def __init__(self, config: Config, model=None, tokenizer=None, callbacks: Optional[List[Callback]] = None,
                 reference=None):
        """``reference``: a ready :mod:`dpokit.reference` object to use instead of building one from
        ``config.reference`` (the online round loop passes the previous round's policy this way)."""
        from accelerate import Accelerator

        self.config = config
        t = config.train
        trackers = available_trackers(t.report_to)
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(t.mixed_precision),
            log_with=trackers or None,
            project_dir=t.output_dir,
            cpu=dist_utils.cpu_only(),  # torchrun on CPUs: a gloo group rather than W lone processes
        )
        dist_utils.check_launch(self.accelerator)
        self.engine_kind = dist_utils.engine_kind(self.accelerator)  # single | ddp | fsdp | fsdp2 | deepspeed
        # FSDP and DeepSpeed split model/optimizer state over processes: checkpoints go through accelerate
        self.sharded_state = self.engine_kind in ("fsdp", "fsdp2", "deepspeed")
        from accelerate.utils import set_seed

        set_seed(t.seed)
        self.output_dir = t.output_dir
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
        self.metrics = MetricsLog(safe_join(self.output_dir, "metrics.jsonl"), enabled=self.is_main)
        self.loss_fn = build_loss(config.loss)
        self.callbacks: List[Callback] = list(callbacks or [])
        if t.monitor:  # over-optimisation indicators at eval steps (dpokit.train.monitor)
            from .monitor import monitor_callback

            self.callbacks.append(monitor_callback(t.monitor))

        self._policy_from_path = model is None
        if model is None:
            model, tokenizer = load_policy(config)
        _check_layout(model, t.layout)
        self.tokenizer = tokenizer
        self.engine = LogProbEngine(self.loss_fn.needs, tokenizer.pad_token_id, t.layout, t.chunk_size)
        self.train_examples, self.eval_examples = self._load_data()
        self.reference = self._build_reference(model) if reference is None else reference
        if config.reference.sync_every:
            self.callbacks.append(sync_reference_callback(config.reference.sync_every, config.reference.sync_alpha))

        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                           weight_decay=t.weight_decay)
        # train.batch_size is per process: the order is cut into global batches of batch_size * W
        # (what one process with that batch size sees) and process r trains on slice r of each.
        world = self.accelerator.num_processes
        self.global_batch_size = t.batch_size * world
        self.order = EpochBatchOrder([ex.num_tokens for ex in self.train_examples], self.global_batch_size, t.seed,
                                     t.group_by_length)
        if self.data_plan.stages is not None:  # Curry-DPO: stage-ordered batches, reference <- policy per stage
            self.order = CurriculumBatchOrder([self.data_plan.stages[ex.index] for ex in self.train_examples],
                                              self.global_batch_size, t.seed, self.data_plan.num_stages,
                                              self.data_plan.epochs_per_stage)
            self.callbacks.append(curriculum_reference_callback(self.order))
        self._plan_start = 0  # sample position the current epoch's plan starts at (a resume under another W)
        self._plan: Optional[tuple] = None  # (epoch, EpochPlan) of the epoch being trained
        self.micro_per_epoch = len(self.epoch_plan(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.grad_accum)
        self.total_steps = t.max_steps or self.steps_per_epoch * t.epochs
        from transformers import get_scheduler

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
        dist_utils.register_head_for_zero3(self.accelerator, self.model)
        if isinstance(self.reference, AdapterDisabledReference):  # its forwards go through the wrapper too
            dist_utils.link_wrapper(self.reference.model, self.model)
        if config.model.compile:
            self.model = torch.compile(self.model)
        self.stop_requested = False
        self._updating = False  # True while optimizer/scheduler state changes within a step
        self._saved: Optional[tuple] = None  # (step, path) of the last checkpoint written
        self._bad_batches: List[str] = []
        self.state: Dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "tokens": 0, "bad_steps": 0,
                                      "skipped_steps": 0}

    # ---- setup --------------------------------------------------------------------------------
    def _tokenize(self, examples):
        d = self.config.data
        return tokenize_examples(examples, self.tokenizer, d.max_length, d.max_prompt_length, d.truncation_mode,
                                 d.append_eos, d.on_empty_completion)

    def _load_data(self):
        d = self.config.data
        report = LoadReport()
        examples = load_examples(d.train, d.kind, d.split, d.limit, d.on_bad_content, report,
                                 on_extra_columns=d.on_extra_columns)
        eval_examples = (load_examples(d.eval, d.kind, d.split, None, d.on_bad_content,
                                       on_extra_columns=d.on_extra_columns) if d.eval else [])
        if not eval_examples and d.eval_fraction > 0:
            generator = torch.Generator().manual_seed(self.config.train.seed)
            perm = torch.randperm(len(examples), generator=generator).tolist()
            n_eval = max(1, int(len(examples) * d.eval_fraction))
            eval_examples = [examples[i] for i in sorted(perm[:n_eval])]
            examples = [examples[i] for i in sorted(perm[n_eval:])]
        # lists -> pairs for a pairwise loss, label noise, curriculum stages, Sem-DPO weights
        examples, self.data_plan = prepare_examples(examples, d, self.loss_fn.needs.data, training=True)
        eval_examples, _ = prepare_examples(eval_examples, d, self.loss_fn.needs.data, training=False)
        train, train_report = self._tokenize(examples)
        evaluation, _ = self._tokenize(eval_examples) if eval_examples else ([], None)
        offset = 1 + max(ex.index for ex in train) if train else 0
        for ex in evaluation:  # train and eval positions key one reference cache: keep them distinct
            ex.index += offset
        if not train:
            raise ValueError("no training examples remain after tokenization: " + train_report.summary())
        self.data_report = {"load": report.summary(), "tokenize": train_report.summary()}
        logger.info("data: %s; %s", report.summary(), train_report.summary())
        if self.loss_fn.needs.data == "unpaired":
            self._warn_unpaired_balance(train)
        return train, evaluation

    def _warn_unpaired_balance(self, examples) -> None:
        from .. import losses

        warn = getattr(losses, "kto_weight_warning", None)
        if warn is None:
            return
        hparams = getattr(self.loss_fn, "hparams", {})
        desirable = sum(1 for ex in examples if ex.label)
        message = warn(desirable, len(examples) - desirable, hparams.get("desirable_weight", 1.0),
                       hparams.get("undesirable_weight", 1.0))
        if message:
            logger.warning(message)

    def _build_reference(self, policy):
        r, needs = self.config.reference, self.loss_fn.needs
        if not needs.reference:
            return None
        kind = r.kind
        if kind == "auto":
            kind = "path" if r.path else ("lora_disabled" if self.config.lora.enabled else "copy")
        device = self.accelerator.device
        sharded = dist_utils.shards_parameters(self.accelerator)  # FSDP, ZeRO-3: a sharded frozen copy
        if sharded and "ref_kl" in self.loss_fn.needs.token_stats:
            raise ConfigError("this loss reads per-token KL to the reference from its hidden states, which needs an "
                              "unsharded reference: use DDP or ZeRO-1/2 for it")
        if sharded and r.sync_every:
            raise ConfigError("reference.sync_every (TR-DPO) updates the reference from the policy in place, which "
                              "needs unsharded models: use DDP or ZeRO-1/2 for it")
        fingerprint = None
        if kind == "lora_disabled":
            reference = AdapterDisabledReference(policy)
        else:
            if kind == "path":
                frozen = load_causal_lm(r.path, self.config.model)
            elif sharded and self._policy_from_path:  # a fresh load: a ZeRO-3 policy may be partitioned already
                frozen = load_causal_lm(self.config.model.name_or_path, self.config.model)
            else:
                base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
                frozen = copy.deepcopy(base)
            if sharded and r.precompute:  # the cache key hashes the weights, which sharding splits
                fingerprint = dist_utils.weights_fingerprint(r.path if kind == "path" else self.config.model.name_or_path,
                                                             frozen, self.config.model.revision)
            reference = ModelReference(dist_utils.prepare_frozen(self.accelerator, frozen))
        if r.precompute:
            cache_dir = r.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "dpokit", "reference")
            if not sharded or kind == "lora_disabled":
                policy.to(device)
            with torch.no_grad():
                cached = dist_utils.build_reference_cache(reference, self.engine,
                                                          self.train_examples + self.eval_examples, cache_dir,
                                                          self.config.train.batch_size, fingerprint)
            del reference  # the reference weights are no longer needed in memory
            reference = cached.to(device)
        return reference

    # ---- the loop -----------------------------------------------------------------------------
    def compute_loss(self, batch, training: bool = True):
        self.loss_fn.training = training
        with self.accelerator.autocast():
            inputs: LossInputs = self.engine.loss_inputs(self.model, batch, self.reference)
            out = self.loss_fn(inputs)
        return out

    def _batch(self, positions, examples):
        return collate([examples[i] for i in positions], self.loss_fn.needs.data)

    def _epoch_micro_batches(self, epoch: int) -> List[List[int]]:
        """The epoch's global batches (every process gets the same list; each trains on its slice)."""
        return self.epoch_plan(epoch).batches

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

    def _install_signal_handlers(self):
        previous = {}

        def request_stop(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            logger.warning("received signal %d: finishing this step, then checkpointing and stopping", signum)
            self.stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass
        return previous

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        t = self.config.train
        for name in ("checkpoints", "final"):  # a link leading out of the run directory: refuse now, not at the end
            safe_join(self.output_dir, name)
        if resume:
            self._resume()
        elif self.is_main:
            self._write_config()
        self.accelerator.init_trackers("dpokit", config=_flat_config(self.config)) if self.accelerator.log_with else None
        previous_handlers = self._install_signal_handlers()
        progress = self._progress_bar()
        window_metrics: Dict[str, List[float]] = {}
        start_time = time.time()
        start_step = self.state["step"]
        status = "completed"
        try:
            while self.state["step"] < self.total_steps and self.state["epoch"] < t.epochs:
                micro_batches = self._epoch_micro_batches(self.state["epoch"])
                while self.state["micro"] < len(micro_batches) and self.state["step"] < self.total_steps:
                    window = micro_batches[self.state["micro"]:self.state["micro"] + t.grad_accum]
                    record = self._optimizer_step(window, window_metrics)
                    self.state["micro"] += len(window)
                    self.state["step"] += 1
                    step = self.state["step"]
                    progress.update(1)
                    if step % t.log_every == 0 or step == self.total_steps:
                        record.update(step=step, epoch=self.state["epoch"] + self.state["micro"] / len(micro_batches),
                                      lr=self.scheduler.get_last_lr()[0], tokens=self.state["tokens"],
                                      steps_per_s=(step - start_step) / max(time.time() - start_time, 1e-9))
                        self._log(record)
                        progress.set_postfix_str(format_metrics(record, ("loss", "rewards/accuracies")))
                    self._check_bad_steps()
                    for callback in self.callbacks:
                        callback(self, step)
                    if t.eval_every and step % t.eval_every == 0 and self.eval_examples:
                        self._log(dict(self.evaluate(), step=step))
                    if t.save_every and step % t.save_every == 0:
                        self._periodic_checkpoint()
                    if self.stop_requested:
                        status = "interrupted"
                        self.save_checkpoint()
                        return {"status": status, **self.state}
                if self.state["micro"] >= len(micro_batches):
                    self.state["epoch"] += 1
                    self.state["micro"] = 0
                    self._plan_start = 0
            if self.eval_examples and not (t.eval_every and self.state["step"] % t.eval_every == 0):
                self._log(dict(self.evaluate(), step=self.state["step"]))
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
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            for tracker in self.accelerator.trackers:  # not end_training(): that also ends the process
                tracker.finish()                        # group, which later trainers (online rounds) reuse
        return {"status": status, **self.state}

    def _optimizer_step(self, window: List[List[int]], window_metrics) -> Dict[str, Any]:
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
            context = self.accelerator.no_sync(self.model) if not sync else _nullcontext()
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
    def _log(self, record: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.metrics.write(record)
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])
        if not self.config.train.progress_bar:
            logger.info("step %s %s", record.get("step"), format_metrics(record))

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                    disable=not (self.is_main and self.config.train.progress_bar), dynamic_ncols=True)

    def _write_config(self) -> None:
        with open(safe_join(self.output_dir, "config.yaml"), "w") as handle:
            yaml.safe_dump(_serializable(self.config.to_dict()), handle, sort_keys=False)

    @property
    def checkpoint_dir(self) -> str:
        return safe_join(self.output_dir, "checkpoints")

    def save_checkpoint(self) -> Optional[str]:
        """Checkpoint the current step (once: a second call at the same step returns the first path)."""
        if self._saved is not None and self._saved[0] == self.state["step"]:  # same decision on every process
            return self._saved[1]
        self.accelerator.wait_for_everyone()
        path = None
        # the data position as a sample index too, so a run with another world size can resume it
        state = dict(self.state, samples=self._samples_done(), global_batch_size=self.global_batch_size,
                     world_size=self.accelerator.num_processes)
        if self.sharded_state:  # every process writes its shards
            path = ckpt.save_engine_checkpoint(self.checkpoint_dir, self.state["step"], self.accelerator,
                                               self.scheduler, state, self.loss_fn.state_dict(),
                                               self.config.train.keep_last)
        elif self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            try:
                path = ckpt.save_checkpoint(self.checkpoint_dir, self.state["step"], model, self.optimizer,
                                            self.scheduler, state, self.loss_fn.state_dict(),
                                            self.config.train.keep_last)
            except OSError:  # reach the barrier the other processes wait at, then report
                self.accelerator.wait_for_everyone()
                raise
        self.accelerator.wait_for_everyone()
        self._saved = (self.state["step"], path or ckpt.step_path(self.checkpoint_dir, self.state["step"]))
        return path

    def _periodic_checkpoint(self) -> None:
        """A periodic checkpoint that fails (a full disk) leaves the previous one intact; training goes
        on and the next save retries. Checkpoints at the end, on a signal or after errors do raise."""
        try:
            self.save_checkpoint()
        except OSError as err:
            logger.error("could not write the checkpoint of step %d (%s); the previous checkpoint is intact, "
                         "training continues and the next save retries", self.state["step"], err)

    def _resume(self) -> None:
        # the main process picks (and verifies) the checkpoint, so every process resumes the same one
        path = dist_utils.broadcast_object(ckpt.latest_valid_checkpoint(self.checkpoint_dir) if self.is_main else None)
        if path is None:
            raise FileNotFoundError(f"--resume: no valid checkpoint under {self.checkpoint_dir}")
        if ckpt.is_engine_checkpoint(path):
            state = ckpt.load_engine_checkpoint(path, self.accelerator, self.scheduler)
        elif self.sharded_state:
            raise ckpt.CheckpointError(
                f"{path} was written by a single-process or DDP run; an {self.engine_kind} run resumes only its own "
                "kind of checkpoint (start a new run from that run's weights instead)")
        else:
            model = self.accelerator.unwrap_model(self.model)
            state = ckpt.load_checkpoint(path, model, self.optimizer, self.scheduler)
        self.loss_fn.load_state_dict(state.pop("loss_state", {}))
        state.pop("rng", None)
        self.state.update({k: v for k, v in state.items() if k in self.state})
        self._map_data_position(state)
        self._saved = (self.state["step"], path)
        self.state["bad_steps"] = 0  # a resumed run (after a fix) gets the full max_bad_steps again
        self.metrics.truncate_after(self.state["step"])
        logger.info("resumed from %s (step %d, epoch %d)", path, self.state["step"], self.state["epoch"])

    def _map_data_position(self, saved: Dict[str, Any]) -> None:
        """The checkpoint's position is a global-batch index; under another global batch size
        (another number of processes at the same per-process batch) continue from its sample index."""
        size = saved.get("global_batch_size")
        if size is None or size == self.global_batch_size or not self.state["micro"]:
            return
        self._plan_start, self.state["micro"] = int(saved["samples"]), 0
        approximate = " (approximately: train.group_by_length orders by batch)" if self.config.train.group_by_length else ""
        logger.warning("resuming a run with global batch %d (%s processes) at global batch %d: epoch %d continues "
                       "from sample %d%s; the schedule length follows the new batch size", size,
                       saved.get("world_size", "?"), self.global_batch_size, self.state["epoch"], self._plan_start,
                       approximate)

    def save_final(self) -> str:
        """``final/``: a model ``AutoModelForCausalLM.from_pretrained`` loads (LoRA merged), the
        tokenizer, and with LoRA the adapter itself under ``final/adapter``."""
        final = safe_join(self.output_dir, "final")
        self.accelerator.wait_for_everyone()
        # FSDP / ZeRO-3: the whole weights gathered on the main process (every process takes part)
        gathered = self.accelerator.get_state_dict(self.model) if self.sharded_state else None
        if self.is_main and gathered is not None:
            self._save_gathered(self.accelerator.unwrap_model(self.model), gathered, final)
        elif self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "merge_and_unload"):
                model.save_pretrained(safe_join(final, "adapter"), safe_serialization=True)
                model = copy.deepcopy(model).merge_and_unload()
            model.save_pretrained(final, safe_serialization=True)
            self.tokenizer.save_pretrained(final)
        self.accelerator.wait_for_everyone()
        return final

    def _save_gathered(self, model, state_dict, final: str) -> None:
        """``final/`` from a gathered state dict (sharded engines): the model, or with LoRA the adapter
        and a merged model rebuilt on the CPU from the base weights."""
        if not hasattr(model, "merge_and_unload"):
            model.save_pretrained(final, state_dict=state_dict, safe_serialization=True)
        else:
            adapter = safe_join(final, "adapter")
            model.save_pretrained(adapter, state_dict=state_dict, safe_serialization=True)
            if self._policy_from_path:
                from peft import PeftModel

                base = load_causal_lm(self.config.model.name_or_path, self.config.model)
                PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(final, safe_serialization=True)
            else:
                logger.warning("final/: only the adapter was saved (the base model was not loaded from a path)")
        self.tokenizer.save_pretrained(final)


def _check_layout(model, layout: str) -> None:
    """A layout the model cannot run stops the run here, before data, reference and training."""
    from ..scoring.lm import layouts

    supported = getattr(layouts, "layout_supported", None)
    if supported is None or layout == "padded":
        return
    ok, reason = supported(model, layout)
    if not ok:
        raise ConfigError(f"train.layout: {layout!r} cannot run on this model: {reason}")


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def sync_reference_callback(every: int, alpha: float) -> Callback:
    """TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): every ``every`` optimizer steps,
    ``theta_ref <- alpha * theta + (1 - alpha) * theta_ref`` (``alpha = 1``: hard update)."""

    def callback(trainer: Trainer, step: int) -> None:
        if step % every:
            return
        reference = trainer.reference
        if not isinstance(reference, ModelReference) or isinstance(reference, AdapterDisabledReference):
            raise ValueError("reference.sync_every needs a separate reference model (kind copy or path)")
        policy = trainer.accelerator.unwrap_model(trainer.model)
        with torch.no_grad():
            ref_params = dict(reference.model.named_parameters())
            for name, param in policy.named_parameters():
                target = ref_params.get(name)
                if target is not None:
                    target.mul_(1.0 - alpha).add_(param.detach().to(target.dtype), alpha=alpha)

    return callback


def _serializable(value):
    if isinstance(value, dict):
        return {k: _serializable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_serializable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _flat_config(config: Config) -> Dict[str, Any]:
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in (values.items() if isinstance(values, dict) else []):
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    return flat
