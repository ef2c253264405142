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

from ..config import Config, build_loss
from ..data import EpochBatchOrder, collate, load_examples, tokenize_examples
from ..data.formats import LoadReport
from ..engine import LogProbEngine
from ..losses import LossInputs
from ..models import load_causal_lm, load_policy
from ..reference import AdapterDisabledReference, CachedReference, ModelReference
from . import checkpoint as ckpt
from .logging import MetricsLog, available_trackers, format_metrics

logger = logging.getLogger("dpokit")

Callback = Callable[["Trainer", int], None]


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class NonFiniteError(RuntimeError):
    pass


class Trainer:
    def __init__(self, config: Config, model=None, tokenizer=None, callbacks: Optional[List[Callback]] = None):
        from accelerate import Accelerator

        self.config = config
        t = config.train
        trackers = available_trackers(t.report_to)
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(t.mixed_precision),
            log_with=trackers or None,
            project_dir=t.output_dir,
        )
        from accelerate.utils import set_seed

        set_seed(t.seed)
        self.output_dir = t.output_dir
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
        self.metrics = MetricsLog(os.path.join(self.output_dir, "metrics.jsonl"), enabled=self.is_main)
        self.loss_fn = build_loss(config.loss)
        self.callbacks: List[Callback] = list(callbacks or [])

        if model is None:
            model, tokenizer = load_policy(config)
        self.tokenizer = tokenizer
        self.engine = LogProbEngine(self.loss_fn.needs, tokenizer.pad_token_id, t.layout, t.chunk_size)
        self.train_examples, self.eval_examples = self._load_data()
        self.reference = self._build_reference(model)
        if config.reference.sync_every:
            self.callbacks.append(sync_reference_callback(config.reference.sync_every, config.reference.sync_alpha))

        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                           weight_decay=t.weight_decay)
        self.order = EpochBatchOrder([ex.num_tokens for ex in self.train_examples], t.batch_size, t.seed,
                                     t.group_by_length)
        world = self.accelerator.num_processes
        self.micro_per_epoch = math.ceil(len(self.order) / world)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.grad_accum)
        self.total_steps = t.max_steps or self.steps_per_epoch * t.epochs
        from transformers import get_scheduler

        warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * self.total_steps)
        name = {"constant": "constant_with_warmup"}.get(t.scheduler, t.scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if config.model.compile:
            self.model = torch.compile(self.model)
        self.stop_requested = False
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
        examples = load_examples(d.train, d.kind, d.split, d.limit, d.on_bad_content, report)
        eval_examples = load_examples(d.eval, d.kind, d.split, None, d.on_bad_content) if d.eval else []
        if not eval_examples and d.eval_fraction > 0:
            generator = torch.Generator().manual_seed(self.config.train.seed)
            perm = torch.randperm(len(examples), generator=generator).tolist()
            n_eval = max(1, int(len(examples) * d.eval_fraction))
            eval_examples = [examples[i] for i in sorted(perm[:n_eval])]
            examples = [examples[i] for i in sorted(perm[n_eval:])]
        train, train_report = self._tokenize(examples)
        evaluation, _ = self._tokenize(eval_examples) if eval_examples else ([], None)
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
        if kind == "lora_disabled":
            reference = AdapterDisabledReference(policy)
        elif kind == "path":
            reference = ModelReference(load_causal_lm(r.path, self.config.model).to(device))
        else:
            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            reference = ModelReference(copy.deepcopy(base).to(device))
        if r.precompute:
            cache_dir = r.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "dpokit", "reference")
            policy.to(device)
            with torch.no_grad():
                cached = CachedReference.build(reference, self.engine, self.train_examples + self.eval_examples,
                                               cache_dir, self.config.train.batch_size)
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
        return collate([examples[i] for i in positions], "unpaired" if self.loss_fn.needs.data == "unpaired" else "pairs")

    def _epoch_micro_batches(self, epoch: int) -> List[List[int]]:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return self.order.batches(epoch)[rank::world]

    def _install_signal_handlers(self):
        previous = {}

        def request_stop(signum, frame):
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
                    for callback in self.callbacks:
                        callback(self, step)
                    if t.eval_every and step % t.eval_every == 0 and self.eval_examples:
                        self._log(dict(self.evaluate(), step=step))
                    if t.save_every and step % t.save_every == 0:
                        self.save_checkpoint()
                    if self.stop_requested:
                        status = "interrupted"
                        self.save_checkpoint()
                        return {"status": status, **self.state}
                if self.state["micro"] >= len(micro_batches):
                    self.state["epoch"] += 1
                    self.state["micro"] = 0
            if self.eval_examples and not (t.eval_every and self.state["step"] % t.eval_every == 0):
                self._log(dict(self.evaluate(), step=self.state["step"]))
            self.save_checkpoint()
            self.save_final()
        except NonFiniteError:
            self.save_checkpoint()
            raise
        finally:
            progress.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.accelerator.end_training()
        return {"status": status, **self.state}

    def _optimizer_step(self, window: List[List[int]], window_metrics) -> Dict[str, Any]:
        sums: Dict[str, float] = {}
        losses = []
        for k, positions in enumerate(window):
            batch = self._batch(positions, self.train_examples)
            sync = k == len(window) - 1
            context = self.accelerator.no_sync(self.model) if not sync else _nullcontext()
            with context:
                out = self.compute_loss(batch, training=True)
                loss = out.loss.mean()
                self.accelerator.backward(loss / len(window))
            losses.append(loss.detach())
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value) / len(window)
            self.state["tokens"] += batch.num_tokens
        mean_loss = torch.stack(losses).mean()
        grad_norm = None
        if self.config.train.max_grad_norm:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.max_grad_norm)
        finite = bool(torch.isfinite(mean_loss)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
        if finite:
            self.optimizer.step()
            self.state["bad_steps"] = 0
        else:
            self.state["bad_steps"] += 1
            self.state["skipped_steps"] += 1
            logger.warning("non-finite loss or gradient at step %d: step skipped (%d in a row)",
                           self.state["step"] + 1, self.state["bad_steps"])
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.state["bad_steps"] >= self.config.train.max_bad_steps:
            raise NonFiniteError(
                f"{self.state['bad_steps']} consecutive steps had a non-finite loss or gradient; the run stopped "
                "with a checkpoint. Lower train.lr, check the data, or use bf16 instead of fp16."
            )
        record = {"loss": self.accelerator.gather(mean_loss.reshape(1)).mean().item(), **sums,
                  "skipped_steps": self.state["skipped_steps"]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        return record

    @torch.no_grad()
    def evaluate(self, examples=None) -> Dict[str, float]:
        """Mean eval loss and metrics over the eval set (``eval/`` prefix); loss state is not updated."""
        examples = examples if examples is not None else self.eval_examples
        self.model.eval()
        size = self.config.train.eval_batch_size or self.config.train.batch_size
        totals: Dict[str, float] = {}
        count = 0
        for start in range(0, len(examples), size):
            batch = self._batch(range(start, min(start + size, len(examples))), examples)
            out = self.compute_loss(batch, training=False)
            n = len(batch)
            totals["loss"] = totals.get("loss", 0.0) + out.loss.sum().item()
            for key, value in out.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value) * n
            count += n
        self.model.train()
        return {f"eval/{k}": v / max(count, 1) for k, v in totals.items()}

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
        with open(os.path.join(self.output_dir, "config.yaml"), "w") as handle:
            yaml.safe_dump(_serializable(self.config.to_dict()), handle, sort_keys=False)

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "checkpoints")

    def save_checkpoint(self) -> Optional[str]:
        self.accelerator.wait_for_everyone()
        path = None
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            path = ckpt.save_checkpoint(self.checkpoint_dir, self.state["step"], model, self.optimizer, self.scheduler,
                                        dict(self.state), self.loss_fn.state_dict(), self.config.train.keep_last)
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self) -> None:
        path = ckpt.latest_valid_checkpoint(self.checkpoint_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no valid checkpoint under {self.checkpoint_dir}")
        model = self.accelerator.unwrap_model(self.model)
        state = ckpt.load_checkpoint(path, model, self.optimizer, self.scheduler)
        self.loss_fn.load_state_dict(state.pop("loss_state", {}))
        state.pop("rng", None)
        self.state.update({k: v for k, v in state.items() if k in self.state})
        self.metrics.truncate_after(self.state["step"])
        logger.info("resumed from %s (step %d, epoch %d)", path, self.state["step"], self.state["epoch"])

    def save_final(self) -> str:
        """``final/``: a model ``AutoModelForCausalLM.from_pretrained`` loads (LoRA merged), the
        tokenizer, and with LoRA the adapter itself under ``final/adapter``."""
        final = os.path.join(self.output_dir, "final")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "merge_and_unload"):
                model.save_pretrained(os.path.join(final, "adapter"), safe_serialization=True)
                model = copy.deepcopy(model).merge_and_unload()
            model.save_pretrained(final, safe_serialization=True)
            self.tokenizer.save_pretrained(final)
        self.accelerator.wait_for_everyone()
        return final


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
