"""Fixtures for the reliability tests: one reference run (uninterrupted) that interrupted and
resumed runs must reproduce, and loss registration that leaves the registry as it was."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs, train_config, write_jsonl

# 32 pairs, batch 4 -> 8 steps per epoch; 2 epochs = 16 steps, a checkpoint every 4.
RUN_TRAIN = {"epochs": 2, "save_every": 4, "keep_last": 2, "lr": 1e-2}


def final_weights(run_dir):
    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


@pytest.fixture(scope="session")
def run_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("run-data") / "pairs.jsonl", make_pairs(32))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_model_dir, run_data):
    """Final weights of the uninterrupted run every crash/resume test must reproduce."""
    from dpokit.config import from_dict
    from dpokit.train import Trainer

    out = tmp_path_factory.mktemp("reference-run")
    Trainer(from_dict(train_config(tiny_model_dir, run_data, out, train=RUN_TRAIN))).fit()
    return final_weights(out)


@contextlib.contextmanager
def registered(name, fn, **kwargs):
    """Register a loss for the duration of a block, then remove it again."""
    from dpokit.losses import register_loss
    from dpokit.losses import registry

    register_loss(name, **kwargs)(fn)
    try:
        yield
    finally:
        registry._REGISTRY.pop(name, None)
