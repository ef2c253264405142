"""Numerical faults: a non-finite loss or gradient skips the step (counted, weights untouched);
max_bad_steps in a row stop the run with a checkpoint and an explanation; fp16 overflow under loss
scaling lowers the scale instead of counting as a fault; an exception inside a step leaves a
checkpoint of the last completed step."""

import json
import os

import pytest
import torch
import yaml

from dpokit.config import from_dict
from dpokit.losses import LossOutput, Needs, get_loss
from dpokit.train import Trainer
from dpokit.train import checkpoint as ckpt
from dpokit.train.logging import read_metrics
from dpokit.train.trainer import NonFiniteError

from conftest import train_config
from .conftest import RUN_TRAIN, assert_same_weights, final_weights, registered

pytestmark = pytest.mark.slow  # training runs end to end with injected faults

PLAN = {"nan_calls": set(), "nan_grad_calls": set(), "calls": 0}
_dpo = get_loss("dpo", beta=0.1)


def poisoned_loss(inputs, beta: float = 0.1) -> LossOutput:
    """DPO whose loss (or only its gradient) is made NaN on the training calls listed in PLAN."""
    out = _dpo(inputs)
    PLAN["calls"] += 1  # counted once the inputs are read (config validation probes the loss without inputs)
    loss = out.loss
    if PLAN["calls"] in PLAN["nan_calls"]:
        loss = loss * float("nan")
    if PLAN["calls"] in PLAN["nan_grad_calls"]:  # finite value, NaN gradient: 0 * d sqrt(x)/dx at x = 0
        x = inputs.policy_chosen_logps
        loss = loss + 0.0 * torch.sqrt(x - x.detach())
    return LossOutput(loss, out.metrics)


@pytest.fixture
def poisoned():
    PLAN.update(nan_calls=set(), nan_grad_calls=set(), calls=0)
    with registered("test_poisoned", poisoned_loss, family="test", source="test", needs=Needs(reference=True)):
        yield PLAN


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}


def run_config(tiny_model_dir, pairs_file, out, **train):
    return from_dict(train_config(tiny_model_dir, pairs_file, out, loss={"name": "test_poisoned", "beta": 0.1},
                                  train={"max_steps": 5, "max_bad_steps": 3, **train}))


@pytest.mark.parametrize("fault, max_grad_norm", [("nan_calls", 1.0), ("nan_grad_calls", None)])
def test_non_finite_step_is_skipped_and_counted(tiny_model_dir, pairs_file, tmp_path, poisoned, fault, max_grad_norm):
    poisoned[fault] = {2, 3}
    snapshots = {}
    trainer = Trainer(run_config(tiny_model_dir, pairs_file, tmp_path / "run", max_grad_norm=max_grad_norm),
                      callbacks=[lambda tr, step: snapshots.__setitem__(step, weights(tr))])
    before = weights(trainer)
    result = trainer.fit()
    assert result["status"] == "completed" and result["step"] == 5 and result["skipped_steps"] == 2
    assert result["bad_steps"] == 0  # the streak ended with step 4
    for name, value in before.items():  # steps 2 and 3 left the weights as step 1 had them
        assert torch.equal(snapshots[2][name], snapshots[1][name]) and torch.equal(snapshots[3][name], snapshots[1][name])
        assert not torch.equal(snapshots[1][name], value) or name.endswith("norm.weight")
        assert torch.isfinite(snapshots[5][name]).all()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 2, 2]
    assert all(r["grad_norm"] == r["grad_norm"] for r in rows if r["skipped_steps"] == 0)  # logged, finite


def test_consecutive_bad_steps_stop_the_run_with_checkpoint_and_explanation(tiny_model_dir, pairs_file, tmp_path,
                                                                            poisoned, capsys):
    from dpokit.cli import main

    poisoned["nan_calls"] = set(range(2, 100))  # step 1 trains, then every step is NaN
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", loss={"name": "test_poisoned"},
                       train={"max_steps": 8, "max_bad_steps": 3})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 3
    err = capsys.readouterr().err
    assert "3 consecutive steps (up to step 4) had a non-finite loss or gradient" in err
    assert "checkpoint" in err and "Last bad batch: pairs.jsonl:" in err and "Lower train.lr" in err
    latest = ckpt.latest_valid_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert latest.endswith("step-000004") and not (tmp_path / "run" / "final").exists()
    state = json.load(open(os.path.join(latest, "trainer_state.json")))
    assert (state["step"], state["bad_steps"], state["skipped_steps"]) == (4, 3, 3)


class FakeScaler:
    """Stands in for accelerate's fp16 GradScaler (fp16 needs a GPU): records scale updates."""

    def __init__(self, scale=65536.0):
        self._scale, self.updates = scale, 0

    def scale(self, loss):
        return loss

    def get_scale(self):
        return self._scale

    def update(self):
        self._scale /= 2
        self.updates += 1


def test_fp16_overflow_lowers_the_loss_scale_without_counting_as_a_fault(tiny_model_dir, pairs_file, tmp_path,
                                                                         poisoned):
    poisoned["nan_grad_calls"] = {1, 2, 3, 4}  # four overflows in a row, more than max_bad_steps=3
    trainer = Trainer(run_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=6))
    scaler = trainer.accelerator.scaler = FakeScaler()
    result = trainer.fit()
    assert result["status"] == "completed" and result["skipped_steps"] == 4 and scaler.updates == 4
    assert scaler.get_scale() == 65536.0 / 16

    # a non-finite *loss* is a fault even under loss scaling, and so is overflow at a scale below 1
    poisoned.update(nan_calls={1, 2, 3}, nan_grad_calls=set(), calls=0)
    trainer = Trainer(run_config(tiny_model_dir, pairs_file, tmp_path / "run2", max_steps=6))
    trainer.accelerator.scaler = FakeScaler()
    with pytest.raises(NonFiniteError):
        trainer.fit()
    poisoned.update(nan_calls=set(), nan_grad_calls={1, 2, 3}, calls=0)
    trainer = Trainer(run_config(tiny_model_dir, pairs_file, tmp_path / "run3", max_steps=6))
    trainer.accelerator.scaler = FakeScaler(scale=0.5)
    with pytest.raises(NonFiniteError):
        trainer.fit()


def test_exception_inside_a_step_checkpoints_the_last_completed_step(tiny_model_dir, run_data, reference_run,
                                                                     tmp_path, monkeypatch):
    """E.g. out of memory on a long batch: the run stops with a checkpoint of step 6 (the failed
    step 7 left only gradients), and --resume ends with the uninterrupted run's weights."""
    raw = train_config(tiny_model_dir, run_data, tmp_path / "run", train=dict(RUN_TRAIN, save_every=5))
    original = Trainer.compute_loss
    calls = {"n": 0}

    def failing(self, batch, training=True):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated out of memory")
        return original(self, batch, training)

    monkeypatch.setattr(Trainer, "compute_loss", failing)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        Trainer(from_dict(raw)).fit()
    monkeypatch.setattr(Trainer, "compute_loss", original)
    checkpoints = ckpt.list_checkpoints(str(tmp_path / "run" / "checkpoints"))
    assert [os.path.basename(p) for p in checkpoints] == ["step-000005", "step-000006"]
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == 16
    assert_same_weights(final_weights(tmp_path / "run"), reference_run)
