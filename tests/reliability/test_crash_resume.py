"""Crash safety end to end, with `python -m dpokit.cli train` in a subprocess on a tiny model:
SIGTERM checkpoints and exits cleanly; kill -9 after a checkpoint, or in the middle of writing
one, loses nothing that --resume cannot redo. Every resumed run ends with the same final weights
as the uninterrupted reference run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dpokit.config import from_dict
from dpokit.train import Trainer
from dpokit.train import checkpoint as ckpt
from dpokit.train.logging import read_metrics

from conftest import train_config
from .conftest import RUN_TRAIN, assert_same_weights, final_weights

pytestmark = pytest.mark.slow  # training runs in subprocesses, killed and resumed

ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def write_config(tmp_path, tiny_model_dir, run_data):
    raw = train_config(tiny_model_dir, run_data, tmp_path / "run", train=RUN_TRAIN)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, str(path)


def wait_for(path, proc, timeout=180.0):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def start(args):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)


def test_sigterm_checkpoints_exits_cleanly_and_resume_matches(tmp_path, tiny_model_dir, run_data, reference_run):
    raw, config = write_config(tmp_path, tiny_model_dir, run_data)
    checkpoints = tmp_path / "run" / "checkpoints"
    proc = start(["-m", "dpokit.cli", "train", config])
    wait_for(checkpoints / "step-000004", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "interrupted" and 4 <= result["step"] < 16
    assert "received signal 15" in err
    latest = ckpt.latest_valid_checkpoint(str(checkpoints))
    assert latest.endswith(f"step-{result['step']:06d}") and not (tmp_path / "run" / "final").exists()
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp")]

    resumed = subprocess.run([sys.executable, "-m", "dpokit.cli", "train", config, "--resume"], capture_output=True,
                             text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["status"] == "completed"
    assert_same_weights(final_weights(tmp_path / "run"), reference_run)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 17))


PAUSE_AT_STEP = """
import sys, time
from dpokit.train import Trainer

marker, stop_at = sys.argv[2], int(sys.argv[3])
real_init = Trainer.__init__


def pause(trainer, step):
    if step == stop_at:  # this step's metrics are written; its evaluation and checkpoint are not
        open(marker, "w").close()
        time.sleep(120)


def init(self, config, *args, callbacks=None, **kwargs):
    real_init(self, config, *args, callbacks=[pause, *(callbacks or [])], **kwargs)


Trainer.__init__ = init
from dpokit.cli import main

sys.exit(main(["train", sys.argv[1]]))
"""


def test_kill_9_after_a_checkpoint_then_resume_matches(tmp_path, tiny_model_dir, run_data, reference_run):
    raw, config = write_config(tmp_path, tiny_model_dir, run_data)
    checkpoints = tmp_path / "run" / "checkpoints"
    script, marker = tmp_path / "pause_at_step.py", tmp_path / "paused"
    script.write_text(PAUSE_AT_STEP)
    stop_at = random.Random(os.getpid()).randint(5, 7)  # somewhere in the steps after the checkpoint at 4
    proc = start([str(script), config, str(marker), str(stop_at)])
    wait_for(marker, proc)  # the run holds at stop_at until killed: it cannot finish first
    logged = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert logged == list(range(1, stop_at + 1))  # progress past the checkpoint, on disk
    assert sorted(os.listdir(checkpoints)) == ["step-000004"]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest_valid_checkpoint(str(checkpoints)) is not None
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == 16
    assert_same_weights(final_weights(tmp_path / "run"), reference_run)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 17))  # lines the killed run wrote after its checkpoint were dropped


SLOW_SAVE = """
import sys, time
from dpokit.train import checkpoint as ckpt

real, calls = ckpt.save_file, []


def slow_save_file(tensors, path, *args, **kwargs):
    real(tensors, path, *args, **kwargs)
    calls.append(path)
    if len(calls) == 2:  # the second checkpoint: first file written, the rest still to come
        open(sys.argv[2], "w").close()
        time.sleep(120)


ckpt.save_file = slow_save_file
from dpokit.cli import main

sys.exit(main(["train", sys.argv[1]]))
"""


def test_kill_9_while_writing_a_checkpoint_then_resume_matches(tmp_path, tiny_model_dir, run_data, reference_run):
    raw, config = write_config(tmp_path, tiny_model_dir, run_data)
    checkpoints = tmp_path / "run" / "checkpoints"
    script, marker = tmp_path / "slow_save.py", tmp_path / "writing"
    script.write_text(SLOW_SAVE)
    proc = start([str(script), config, str(marker)])
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = sorted(os.listdir(checkpoints))
    assert left == ["step-000004", f".tmp-step-000008-{proc.pid}"] or left == [f".tmp-step-000008-{proc.pid}",
                                                                                 "step-000004"]
    assert ckpt.latest_valid_checkpoint(str(checkpoints)).endswith("step-000004")
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == 16
    assert_same_weights(final_weights(tmp_path / "run"), reference_run)
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp")]  # the dead writer's files are gone


def test_sigint_in_process_checkpoints_and_a_second_sigint_stops_at_once(tmp_path, tiny_model_dir, pairs_file):
    """The real signal path (Ctrl-C) without a subprocess: the first SIGINT finishes the step and
    checkpoints; a second one during the same step raises KeyboardInterrupt at once."""
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"max_steps": 6})

    def ctrl_c_at_3(trainer, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    result = Trainer(from_dict(raw), callbacks=[ctrl_c_at_3]).fit()
    assert result["status"] == "interrupted" and result["step"] == 3
    assert ckpt.latest_valid_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("step-000003")
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored

    def ctrl_c_twice(trainer, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        Trainer(from_dict(raw), callbacks=[ctrl_c_twice]).fit(resume=True)
    assert signal.getsignal(signal.SIGINT) is previous
