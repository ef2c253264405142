"""How a :class:`~dpokit.train.Trainer` saves and resumes: checkpoints of the run state and ``final/``.

A checkpoint holds the trainable weights, the optimizer and scheduler state, the RNG states, the
loss's own state and the data position (as a global-batch index and a sample index, so a run with
another number of processes can resume it). Writing and verifying the files is
:mod:`dpokit.train.checkpoint`; this mixin decides what goes in and where the loop continues.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from .. import distributed as dist_utils
from ..errors import CheckpointError, ConfigError
from ..models import load_causal_lm
from ..paths import safe_join
from . import checkpoint as ckpt
from .model_card import write_model_card

logger = logging.getLogger("dpokit")


class CheckpointingMixin:
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
                                            self.config.train.keep_last, self._scorer_state())
            except OSError:  # reach the barrier the other processes wait at, then report
                self.accelerator.wait_for_everyone()
                raise
        self.accelerator.wait_for_everyone()
        self._saved = (self.state["step"], path or ckpt.step_path(self.checkpoint_dir, self.state["step"]))
        return path

    def _check_scorer_engine(self) -> None:
        """A scorer that trains a model of its own (the OREO value model) saves it beside the policy in a
        single-process or DDP checkpoint; FSDP and DeepSpeed checkpoints would not hold it, so such a
        run stops here, before training, not at its first checkpoint or its resume."""
        if self.sharded_state and callable(getattr(self.scorer, "checkpoint_state", None)):
            raise ConfigError(f"train.scorer: {type(self.scorer).__name__} trains a model of its own (the OREO value "
                              f"model), which {self.engine_kind} checkpoints do not hold; run it in a "
                              "single process or with DDP")

    def _scorer_state(self) -> Dict[str, Any]:
        """Files of models the scorer trains outside the policy (``checkpoint_state()``: the OREO value
        model, :class:`dpokit.steps.value.ValueScorer`); none for the plain scorers."""
        get = getattr(self.scorer, "checkpoint_state", None)
        return get() if callable(get) else {}

    def _restore_scorer_state(self, path: str) -> None:
        load = getattr(self.scorer, "load_checkpoint_state", None)
        if callable(load):
            load(path)

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
            if self._scorer_state():
                raise CheckpointError(f"{path}: an {self.engine_kind} checkpoint does not hold the scorer's own "
                                      "models (the OREO value model); resume it in a single-process or DDP run")
        elif self.sharded_state:
            raise CheckpointError(
                f"{path} was written by a single-process or DDP run; an {self.engine_kind} run resumes only its own "
                "kind of checkpoint (start a new run from that run's weights instead)")
        else:
            model = self.accelerator.unwrap_model(self.model)
            state = ckpt.load_checkpoint(path, model, self.optimizer, self.scheduler)
            self._restore_scorer_state(path)
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
        tokenizer, with LoRA the adapter itself under ``final/adapter``, and a model card (README.md);
        a model family with its own ``save_final`` (diffusion: dpokit.families) writes its layout instead."""
        family_save = getattr(getattr(self, "family", None), "save_final", None)
        if family_save is not None:
            return family_save(self)
        base = (lambda: load_causal_lm(self.config.model.name_or_path, self.config.model)) if self._policy_from_path else None
        final = ckpt.save_final_model(self.accelerator, self.model, self.tokenizer, safe_join(self.output_dir, "final"),
                                      self.sharded_state, base)
        if self.is_main:
            from safetensors.torch import save_file

            for name, tensors in self._scorer_state().items():  # the value model beside the policy it was trained with
                save_file(tensors, safe_join(final, name))
        if self.is_main:  # final/README.md: a Hugging Face model card, so the directory can be pushed as it is
            write_model_card(final, self.config, num_examples={"train": len(self.train_examples),
                                                               "eval": len(self.eval_examples)})
        return final
