"""Chaos soak: a 200-step run of `python -m dpokit.cli train` is stopped again and again, by SIGTERM
(checkpoint, exit 130) and by SIGKILL (no warning), at seeded random steps, and resumed each time with
`--resume` (the last resume, which runs to the end, in process: a launch costs more CPU time than
the 200 steps). It must end with the weights of the uninterrupted run, bit for bit, and with every step
in metrics.jsonl once, in order, with the uninterrupted run's values.

Bitwise, not within a tolerance: both runs execute the same float32 CPU kernels on the same thread
count in the same order, and a resume restores exact copies of the weights (safetensors), optimizer,
scheduler, RNG and data position; any difference is lost or wrong state, not rounding.

Reproduce a failure with the seed it prints: `SOAK_SEED=<seed> pytest tests/reliability/test_chaos_soak.py`;
soak longer with more interruptions: `SOAK_ROUNDS=12` (each costs a process start, about 11 s of CPU)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dpokit.config import from_dict
from dpokit.train import Trainer
from dpokit.train import checkpoint as ckpt
from dpokit.train.logging import read_metrics

from conftest import make_pairs, train_config, write_jsonl
from .conftest import final_weights
from .test_crash_resume import ENV

SEED = int(os.environ.get("SOAK_SEED", "20261201"))
# 100 pairs, batch 2: 50 steps an epoch, 4 epochs; checkpoints every 7 steps (mid-epoch, across epoch ends)
SOAK_TRAIN = {"batch_size": 2, "epochs": 4, "save_every": 7, "keep_last": 2, "lr": 1e-3, "eval_every": 30}
TOTAL = 200
EVAL_STEPS = [30, 60, 90, 120, 150, 180, 200]  # every 30 steps and at the end
ROUNDS = max(2, int(os.environ.get("SOAK_ROUNDS", "4")))
INTERRUPTIONS = [signal.SIGTERM, signal.SIGKILL] * (ROUNDS // 2) + [signal.SIGKILL] * (ROUNDS % 2)
SOAK_ENV = dict(ENV, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the in-process runs' thread count


def train_steps(path):
    """Steps of the training lines in metrics.jsonl so far (a line being written is not one yet)."""
    steps = []
    if os.path.exists(path):
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if "loss" in record:
                    steps.append(record["step"])
    return steps


def launch(config, log, resume):
    args = [sys.executable, "-m", "dpokit.cli", "train", config] + (["--resume"] if resume else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=SOAK_ENV)


def stderr_tail(log):
    log.flush()
    with open(log.name) as handle:
        return handle.read()[-3000:]


def wait_for_step(metrics, proc, target, log, timeout=300.0):
    """Poll metrics.jsonl until this process has logged step ``target`` (progress, not a timer)."""
    deadline = time.time() + timeout
    while True:
        steps = train_steps(metrics)
        if steps and steps[-1] >= target:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before step {target} [seed {SEED}]:\n"
                        f"{stderr_tail(log)}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"step {target} not reached within {timeout} s [seed {SEED}]")
        time.sleep(0.01)


@pytest.mark.slow
def test_chaos_soak_sigterm_and_sigkill_at_random_steps_then_resume_matches(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(100, seed=3))
    heldout = write_jsonl(tmp_path / "eval.jsonl", make_pairs(8, seed=4))
    data = {"train": train, "eval": heldout, "max_length": 48}

    def config_for(name):
        return train_config(tiny_model_dir, train, tmp_path / name, data=data, train=SOAK_TRAIN)

    raw = config_for("run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    metrics, checkpoints = run / "metrics.jsonl", run / "checkpoints"

    rng = random.Random(SEED)
    signals = INTERRUPTIONS[:]
    rng.shuffle(signals)
    width = (TOTAL - 40) // len(signals)  # one random step in each stretch: early, across epochs, late
    targets = [5 + k * width + rng.randrange(width) for k in range(len(signals))]
    history = []  # (signal, observed step, step it stopped at or last logged, checkpoint resumed from)
    with open(tmp_path / "stderr.log", "w") as log:
        resume, last = False, 0
        for sig, target in zip(signals, targets):
            target = max(target, last + 3)  # past what earlier processes logged: progress of this one
            if target > TOTAL - 20:  # too close to the end to be sure the signal lands before it
                break
            proc = launch(str(config), log, resume)
            seen = wait_for_step(metrics, proc, target, log)
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=180)
            if sig == signal.SIGTERM:
                assert proc.returncode == 130, f"[seed {SEED}] {stderr_tail(log)}"
                result = json.loads(out.strip().splitlines()[-1])
                assert result["status"] == "interrupted" and result["step"] >= seen
                latest = ckpt.latest_valid_checkpoint(str(checkpoints))
                assert latest.endswith(f"step-{result['step']:06d}")  # the step it finished, checkpointed
            else:
                assert proc.returncode == -signal.SIGKILL, f"[seed {SEED}] {stderr_tail(log)}"
                latest = ckpt.latest_valid_checkpoint(str(checkpoints))
            assert latest is not None and not (run / "final").exists()
            steps = train_steps(metrics)
            last, resume = steps[-1], True
            history.append((signal.Signals(sig).name, seen, last, os.path.basename(latest)))
        log.flush()
        resumes = open(log.name).read().count("resumed from")
    assert len(history) >= 2 and resumes == len(history) - 1, history
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == TOTAL, history

    Trainer(from_dict(config_for("uninterrupted"))).fit()
    reference = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    records = read_metrics(metrics)
    context = f"seed {SEED}, interruptions (signal, seen step, last logged, resumed from): {history}"

    # (b) every step once, in order, with the uninterrupted run's values; evaluations once each
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, TOTAL + 1)), context
    assert [r["step"] for r in records if "eval/loss" in r] == EVAL_STEPS, context
    keys = ("loss", "grad_norm", "rewards/margins", "logps/chosen", "logps/rejected", "lr", "tokens")
    want = [{k: r[k] for k in keys} for r in reference if "loss" in r]
    assert [{k: r[k] for k in keys} for r in train_records] == want, context
    assert [r for r in records if "eval/loss" in r] == [r for r in reference if "eval/loss" in r], context

    # (a) the final weights of the uninterrupted run, bit for bit
    got, expected = final_weights(run), final_weights(tmp_path / "uninterrupted")
    assert got.keys() == expected.keys()
    differing = {k: float((got[k] - expected[k]).abs().max()) for k in got if not torch.equal(got[k], expected[k])}
    assert not differing, f"{context}; max |difference| per tensor: {differing}"
    print(context)
