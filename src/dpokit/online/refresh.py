"""Online DPO's per-step mode: pairs renewed every ``online.refresh_every`` optimizer steps."""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any, Dict, List, Sequence, Tuple

from ..data.formats import parse_pair
from ..distributed import barrier, is_main_process
from ..train import checkpoint as ckpt
from ..io import write_jsonl
from .rounds import last_train_metrics


class RefreshingRound:
    """A round whose pairs are renewed every ``online.refresh_every`` optimizer steps (Online DPO's
    per-step mode): one Trainer for the round, whose training set is a buffer of
    ``refresh_every * batch_size * grad_accum`` pairs; each epoch of the Trainer is one buffer, and a
    callback refills the buffer from the current policy at each epoch boundary. The round's prompts
    are consumed slice by slice; each slice's samples and scores are persisted like a round's."""

    def __init__(self, loop, r: int, prompts: Sequence[Any]):
        t = loop.config.train
        self.loop, self.r, self.prompts = loop, r, list(prompts)
        self.size = loop.online.refresh_every * t.batch_size * t.grad_accum
        self.slices = max(1, math.ceil(len(self.prompts) / self.size))
        self.rdir = loop.round_dir(r)
        self.stats = {"prompts": 0, "pairs": 0, "slices": self.slices}

    def _slice_rows(self, k: int) -> List[dict]:
        loop = self.loop
        prompts = [self.prompts[(k * self.size + i) % len(self.prompts)] for i in range(self.size)]
        groups = loop.generate(self.r, prompts, self.rdir, f"samples-{k:04d}.jsonl", seed_offset=31 * k)
        loop.score(groups, os.path.join(self.rdir, f"scores-{k:04d}.jsonl"))
        rows, info = loop.strategy.rows(groups, self.r)
        if is_main_process():
            write_jsonl(os.path.join(self.rdir, f"pairs-{k:04d}.jsonl"), info)
        self.stats["prompts"] += len(groups)
        self.stats["pairs"] += len(rows)
        if rows and len(rows) < self.size:  # top up by repeating this slice's pairs
            rng = random.Random(loop.config.train.seed + k)
            rows = rows + [rng.choice(rows) for _ in range(self.size - len(rows))]
        return rows[:self.size]

    def _tokenized(self, trainer, rows: List[dict]):
        # read as the round's train file is read: extras and token ids (the sampled tokens) included
        pairs = [parse_pair(f"refresh slice pair {i}", row) for i, row in enumerate(rows)]
        examples, _ = trainer.tokenize(pairs)
        for position, example in enumerate(examples):
            example.index = position
        return examples

    def run(self) -> Tuple[str, Dict[str, Any]]:
        loop = self.loop
        first = self._first_rows()
        if not first:
            return "completed", {**self.stats, "trained": False}
        data_path = os.path.join(self.rdir, "train-0000.jsonl")
        if is_main_process():
            write_jsonl(data_path, first)
        barrier()
        config = loop.round_config(self.r, data_path, os.path.join(self.rdir, "train"),
                                   epochs=self.slices, max_steps=None)
        state = {"slice": 0}

        def refresh(trainer, step):
            if step % loop.online.refresh_every or step >= trainer.total_steps:
                return
            k = step // loop.online.refresh_every
            if k >= self.slices or k == state["slice"]:
                return
            rows = self._slice_rows(k)
            if rows:
                examples = self._tokenized(trainer, rows)
                if len(examples) == len(trainer.train_examples):
                    trainer.set_train_examples(examples)
            state["slice"] = k

        trainer = loop.make_trainer(config, [refresh])
        if len(trainer.train_examples) != self.size:
            raise ValueError(f"online.refresh_every: {len(trainer.train_examples)} of {self.size} pairs survived "
                             "tokenization; raise data.max_length")
        checkpoint = ckpt.latest_valid_checkpoint(trainer.checkpoint_dir)
        if checkpoint is not None:  # resume: put the buffer of the epoch the trainer continues with
            with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
                saved = json.load(handle)
            k = saved["step"] // loop.online.refresh_every
            if k and k < self.slices:
                trainer.set_train_examples(self._tokenized(trainer, self._slice_rows(k)))
                state["slice"] = k
        result = trainer.fit(resume=checkpoint is not None)
        loop.policy = trainer.accelerator.unwrap_model(trainer.model)
        if result["status"] != "completed":
            return result["status"], {}
        return "completed", {**self.stats, **last_train_metrics(os.path.join(self.rdir, "train", "metrics.jsonl"),
                                                                 result)}

    def _first_rows(self) -> List[dict]:
        return self._slice_rows(0)
