"""Experiment trackers through ``train.report_to``: a short real run of dpokit's Trainer per tracker,
the logged values read back from what the tracker wrote (TensorBoard event files, W&B offline run
files, an MLflow file store) and compared with ``metrics.jsonl``."""

import glob
import logging
import math
import os
import struct
import sys

import pytest

from dpokit.config import ConfigError, from_dict
from dpokit.train import Trainer
from dpokit.train.logging import available_trackers, read_metrics, tracker_key, tracker_values

from conftest import make_pairs, train_config, write_jsonl

# metrics.jsonl keys of a DPO run (users and tests read them: they must not change)
JSONL_TRAIN_KEYS = {"step", "epoch", "loss", "grad_norm", "lr", "tokens", "steps_per_s", "skipped_steps",
                    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                    "logps/chosen", "logps/rejected"}
TRL_TRAIN = ["loss", "grad_norm", "learning_rate", "epoch", "num_tokens", "rewards/chosen", "rewards/rejected",
             "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"]
EVAL = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
        "logps/rejected"]


@pytest.fixture
def short_run(tmp_path, tiny_model_dir):
    """3 optimizer steps with an eval at step 2 and at the end, logging to the given trackers."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))

    def run(report_to, output="run", **train):
        raw = train_config(tiny_model_dir, data, tmp_path / output,
                           data={"train": data, "max_length": 64, "eval_fraction": 0.25},
                           train={"max_steps": 3, "eval_every": 2, "report_to": report_to, **train})
        result = Trainer(from_dict(raw)).fit()
        assert result["status"] == "completed"
        return raw, read_metrics(tmp_path / output / "metrics.jsonl")

    return run


def expected(records, style):
    """{tracker name: [(step, value), ...]} from metrics.jsonl, through the documented map."""
    series = {}
    for record in records:
        for key, value in tracker_values(record, style).items():
            series.setdefault(key, []).append((record["step"], value))
    return series


def check_series(logged, records, style, tolerance):
    want = expected(records, style)
    assert set(want) <= set(logged), sorted(set(want) - set(logged))
    for key, points in want.items():
        got = logged[key]
        assert [s for s, _ in got] == [s for s, _ in points], key
        for (_, a), (_, b) in zip(got, points):
            assert math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), (key, a, b)


def test_metric_names_follow_trl_and_metrics_jsonl_is_unchanged(short_run):
    _, records = short_run([])
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [2, 3]
    assert set(train[0]) == JSONL_TRAIN_KEYS
    assert set(evals[0]) == {"step"} | {f"eval/{k}" for k in EVAL}
    # TensorBoard and W&B: transformers' rewrite_logs (train/..., eval/...); MLflow: its flat names
    prefixed = tracker_values(train[0], "prefixed")
    assert set(prefixed) == {"train/" + k for k in TRL_TRAIN + ["steps_per_s", "skipped_steps"]}
    assert prefixed["train/learning_rate"] == train[0]["lr"] and prefixed["train/num_tokens"] == train[0]["tokens"]
    assert set(tracker_values(evals[0], "prefixed")) == {f"eval/{k}" for k in EVAL}
    assert set(tracker_values(train[0], "flat")) == set(TRL_TRAIN + ["steps_per_s", "skipped_steps"])
    assert set(tracker_values(evals[0], "flat")) == {f"eval_{k}" for k in EVAL}
    assert tracker_key("monitor/kl", "prefixed") == tracker_key("monitor/kl", "flat") == "monitor/kl"
    assert tracker_values({"step": 3, "flag": True, "note": "text", "loss": 0.5}, "flat") == {"loss": 0.5}


def tensorboard_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_run_and_a_resume_replaces_what_a_killed_run_logged(short_run, tmp_path):
    raw, records = short_run(["tensorboard"], max_steps=4, epochs=2, save_every=2)
    logdir = tmp_path / "run" / "tensorboard"
    check_series(tensorboard_scalars(logdir), records, "prefixed", 1e-6)  # event files hold float32
    # as after a kill at step 4: the last checkpoint is step 2, steps 3-4 were logged already
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "run" / "final")
    assert Trainer(from_dict(raw)).fit(resume=True)["status"] == "completed"
    resumed = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4]
    scalars = tensorboard_scalars(logdir)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # not 1, 2, 3, 4, 3, 4
    check_series(scalars, resumed, "prefixed", 1e-6)


def wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): a LevelDB-style log of 32 KiB blocks after a
    7-byte header, each record ``crc32, length (uint16), type (1 full, 2 first, 3 middle, 4 last)``,
    the payload a ``wandb_internal_pb2.Record``. This is the file ``wandb sync`` uploads."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += room
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow  # a W&B offline run: about 3.5 s
def test_wandb_offline_run_holds_the_metrics_and_the_config(short_run, tmp_path, monkeypatch):
    import json

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.makedirs(tmp_path / "wandb-dir")
    raw, records = short_run(["wandb"])
    files = glob.glob(str(tmp_path / "wandb-dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    logged, config, names = {}, {}, []
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    logged.setdefault(key, []).append((step, json.loads(item.value_json)))
        elif kind == "run":
            names.append((record.run.project, record.run.display_name))
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    check_series(logged, records, "prefixed", 1e-12)
    assert names[0] == ("dpokit", "run")
    assert config["train.lr"] == 0.01 and config["loss.name"] == "dpo"


@pytest.mark.slow  # an MLflow file-store run: about 3 s
def test_mlflow_file_store_holds_the_metrics_and_the_parameters(short_run, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use a file store
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    raw, records = short_run(["mlflow"])
    client = MlflowClient(tracking_uri=f"file:{store}")
    experiment = client.get_experiment_by_name("dpokit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    run = runs[0]
    logged = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                      key=lambda m: m.step)]
              for key in run.data.metrics}
    check_series(logged, records, "flat", 1e-12)
    assert "eval_loss" in logged and "learning_rate" in logged and "lr" not in logged
    assert run.data.params["train.lr"] == "0.01" and run.data.params["loss.name"] == "dpo"


def test_a_requested_tracker_that_is_not_installed_is_an_error_naming_the_extra(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    raw = train_config("no-such/model", str(tmp_path / "no-data.jsonl"), tmp_path / "run",  # a hub id: loading it
                       train={"report_to": ["wandb"]})                                        # would be the first read
    with pytest.raises(ConfigError) as err:  # before any model or data is read
        Trainer(from_dict(raw))
    assert "train.report_to" in str(err.value) and "pip install 'dpokit[wandb]'" in str(err.value)
    from dpokit.cli import main

    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 2
    with pytest.raises(ConfigError, match="unknown tracker 'wandbb'"):
        available_trackers(["wandbb"])
    # only the default ([tensorboard]) falls back to metrics.jsonl alone, with a warning
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with caplog.at_level(logging.WARNING, logger="dpokit"):
        assert available_trackers(["tensorboard"]) == []
    assert "dpokit[tensorboard]" in caplog.text
    with pytest.raises(ConfigError, match=r"dpokit\[tensorboard\]"):
        available_trackers(["tensorboard", "mlflow"])
    assert [t.name for t in available_trackers(["all"])] == ["mlflow"]
    assert available_trackers(["none"]) == available_trackers([]) == []
