"""train.max_steps wins over train.epochs, as in transformers' Trainer: the data order continues into
the next epochs, and the progress bar, the schedule, the status and a resume agree."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import from_dict
from dpokit.train import Trainer

from conftest import train_config


def records(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def config(model_dir, data, out, **train):
    # 32 pairs, batch 4: 8 steps per epoch; max_steps 20 needs two and a half epochs
    base = {"max_steps": 20, "epochs": 1, "scheduler": "cosine", "warmup_ratio": 0.0, "lr": 1e-2}
    return from_dict(train_config(model_dir, data, out, train={**base, **train}))


@pytest.mark.slow
def test_max_steps_runs_past_the_end_of_the_epochs(tiny_model_dir, pairs_file, tmp_path):
    trainer = Trainer(config(tiny_model_dir, pairs_file, tmp_path / "run"))
    assert trainer.steps_per_epoch == 8 and trainer.total_steps == 20
    lrs = []
    trainer.callbacks.append(lambda t, step: lrs.append(t.scheduler.get_last_lr()[0]))
    result = trainer.fit()
    assert result["status"] == "completed" and result["step"] == 20
    assert result["epoch"] == 2 and result["micro"] == 4  # half-way through the third epoch
    rows = [r for r in records(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rows[-1]["epoch"] == pytest.approx(2.5)
    # the cosine schedule spans the 20 steps: it ends at 0, not cut off at the end of epoch 1
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[7] > 0.5 * 1e-2
    # the third epoch has its own seeded order, not the first epoch's again
    assert trainer.epoch_plan(2).batches != trainer.epoch_plan(0).batches


@pytest.mark.slow
def test_a_run_past_the_epochs_resumes_to_the_same_weights(tiny_model_dir, pairs_file, tmp_path):
    Trainer(config(tiny_model_dir, pairs_file, tmp_path / "full")).fit()

    def stop_in_the_second_epoch(trainer, step):
        if step == 11:
            trainer.stop_requested = True

    cut = config(tiny_model_dir, pairs_file, tmp_path / "cut", save_every=4)
    assert Trainer(cut, callbacks=[stop_in_the_second_epoch]).fit()["status"] == "interrupted"
    resumed = Trainer(cut).fit(resume=True)
    assert resumed["status"] == "completed" and resumed["step"] == 20
    assert [r["step"] for r in records(tmp_path / "cut" / "metrics.jsonl") if "loss" in r] == list(range(1, 21))
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    again = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for name, value in full.items():
        torch.testing.assert_close(again[name], value, atol=1e-6, rtol=0)


def test_without_max_steps_epochs_decide(tiny_model_dir, pairs_file, tmp_path):
    trainer = Trainer(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=None, epochs=2))
    assert trainer.total_steps == 16
