"""Online-run builders: the config, the prompts file, and a loop that records each round's reference and start.

The word-level policy (``policy_dir``, ``word_tokenizer``) and ``length_judge`` live in tests/conftest.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import from_dict
from dpokit.online.loop import OnlineLoop

from conftest import JUDGE_SPEC

PROMPTS = [f"q {x} {y} :" for x in "abcd" for y in "efgh"]


def online_raw(policy_dir, output_dir, strategy="online_dpo", **online):
    raw = {
        "model": {"name_or_path": policy_dir, "dtype": "float32"},
        "data": {"max_length": 32},
        "loss": {"name": "dpo", "beta": 0.5},
        "train": {"output_dir": str(output_dir), "lr": 5e-3, "batch_size": 4, "epochs": 1, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant",
                  "seed": 0},
        "online": {"strategy": strategy, "rounds": 2, "prompts_per_round": 8, "samples_per_prompt": 3,
                   "max_new_tokens": 5, "generation_batch_size": 8,
                   "judge": {"kind": "callable", "function": JUDGE_SPEC}},
    }
    raw["online"].update(online)
    return raw


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b, atol=1e-6):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


class SpyLoop(OnlineLoop):
    """Records, for every round's Trainer, the reference weights and the policy it starts from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.references, self.starts = [], []

    def make_trainer(self, config, callbacks=()):
        trainer = super().make_trainer(config, callbacks)
        ref = trainer.reference.model
        self.references.append({k: v.detach().clone() for k, v in ref.named_parameters()})
        self.starts.append({k: v.detach().clone() for k, v in self.policy.named_parameters()})
        return trainer


def loop_for(policy_dir, tmp_path, strategy, prompts_file=None, cls=SpyLoop, judge=None, raw_updates=None, **online):
    raw = online_raw(policy_dir, tmp_path / "run", strategy, **online)
    if prompts_file:
        raw["online"]["prompts"] = prompts_file
    for section, values in (raw_updates or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return cls(from_dict(raw), judge=judge)


def round_policy(tmp_path, r):
    return load_file(str(tmp_path / "run" / "rounds" / f"round-{r:03d}" / "policy.safetensors"))
