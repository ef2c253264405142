"""Checkpoints: atomic (a failure while writing, e.g. a full disk, leaves the previous one intact
and no temporary directory), verified on load (a damaged or tampered checkpoint is refused and the
previous one is used), rotated (keep_last), and temporary directories of dead writers cleaned."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from dpokit.config import from_dict
from dpokit.train import Trainer
from dpokit.train import checkpoint as ckpt

from conftest import train_config
from .conftest import RUN_TRAIN, assert_same_weights, final_weights


def tiny_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def save(directory, step, keep_last=3):
    model, optimizer, scheduler = tiny_state()
    return ckpt.save_checkpoint(str(directory), step, model, optimizer, scheduler,
                                {"step": step, "epoch": 0, "micro": step}, {"ema": 1.0}, keep_last)


def names(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("how, target", [("writer", name) for name in ckpt.REQUIRED_FILES] + [("fsync", None)])
def test_full_disk_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch, how, target):
    previous = save(tmp_path, 1)
    real_save_file, real_torch_save, real_fsync = ckpt.save_file, torch.save, os.fsync

    def full_disk(path):
        if os.path.basename(os.fspath(path)) == target:
            with open(path, "ab") as handle:
                handle.write(b"\0" * 17)  # a partly written file
            raise OSError(errno.ENOSPC, "No space left on device")

    if how == "writer":
        monkeypatch.setattr(ckpt, "save_file", lambda t, p, *a, **k: (full_disk(p), real_save_file(t, p, *a, **k)))
        monkeypatch.setattr(torch, "save", lambda obj, p, *a, **k: (full_disk(p), real_torch_save(obj, p, *a, **k)))
        if target == "trainer_state.json":
            real_dump = json.dump
            monkeypatch.setattr(ckpt.json, "dump", lambda obj, handle, *a, **k: (full_disk(handle.name),
                                                                                 real_dump(obj, handle, *a, **k)))
    else:  # the data reached the page cache but flushing it to disk fails
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError) as info:
        save(tmp_path, 2)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert names(tmp_path) == ["step-000001"]  # no step-2, no temporary directory
    ckpt.verify(previous)
    assert ckpt.latest_valid_checkpoint(str(tmp_path)) == previous


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "delete_manifest", "manifest_garbage",
                                    "manifest_drops_file", "manifest_escapes", "manifest_malformed_entry"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, damage):
    good = save(tmp_path, 1)
    bad = save(tmp_path, 2)
    manifest_path = os.path.join(bad, "manifest.json")
    manifest = json.load(open(manifest_path))
    if damage == "flip_byte":
        path = os.path.join(bad, "model.safetensors")
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif damage == "truncate":
        path = os.path.join(bad, "optimizer.pt")
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "delete_file":
        os.remove(os.path.join(bad, "extra.pt"))
    elif damage == "delete_manifest":
        os.remove(manifest_path)
    elif damage == "manifest_garbage":
        open(manifest_path, "wb").write(b"\xff{not json")
    elif damage == "manifest_drops_file":
        manifest.pop("model.safetensors")
        json.dump(manifest, open(manifest_path, "w"))
    elif damage == "manifest_escapes":
        outside = tmp_path / "outside.txt"
        outside.write_text("x")
        manifest["../../outside.txt"] = {"size": 1, "blake2b": ckpt._digest(str(outside))}
        json.dump(manifest, open(manifest_path, "w"))
    elif damage == "manifest_malformed_entry":
        manifest["extra.pt"] = ["not", "a", "mapping"]
        json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify(bad)
    model, optimizer, scheduler = tiny_state()
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(bad, model, optimizer, scheduler)
    assert ckpt.latest_valid_checkpoint(str(tmp_path)) == good
    assert ckpt.load_checkpoint(good, model, optimizer, scheduler)["step"] == 1


def test_rotation_keeps_the_last_n(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep_last=2)
    assert names(tmp_path) == ["step-000004", "step-000005"]


def test_temporary_directories_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".tmp-step-000007-{dead_pid}"
    alive = tmp_path / f".tmp-step-000007-{os.getppid()}"  # a live process may still be writing it
    stale.mkdir()
    alive.mkdir()
    save(tmp_path, 8)
    assert names(tmp_path) == [alive.name, "step-000008"]


def test_damaged_latest_checkpoint_resume_uses_the_previous_and_ends_the_same(tiny_model_dir, run_data,
                                                                                reference_run, tmp_path):
    raw = train_config(tiny_model_dir, run_data, tmp_path / "run", train=RUN_TRAIN)

    def stop_at_9(trainer, step):
        if step == 9:
            trainer.stop_requested = True

    assert Trainer(from_dict(raw), callbacks=[stop_at_9]).fit()["status"] == "interrupted"
    directory = tmp_path / "run" / "checkpoints"
    assert names(directory) == ["step-000008", "step-000009"]
    with open(directory / "step-000009" / "model.safetensors", "r+b") as handle:
        handle.seek(-3, os.SEEK_END)
        handle.write(b"\x00\x01\x02")
    result = Trainer(from_dict(raw)).fit(resume=True)
    assert result["status"] == "completed" and result["step"] == 16
    assert_same_weights(final_weights(tmp_path / "run"), reference_run)


def test_failed_periodic_save_does_not_stop_training(tiny_model_dir, pairs_file, tmp_path, monkeypatch, caplog):
    real = ckpt.save_file
    calls = {"n": 0}

    def first_fails(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", first_fails)
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"max_steps": 4, "save_every": 2})
    with caplog.at_level("ERROR"):
        result = Trainer(from_dict(raw)).fit()
    assert result["status"] == "completed" and "could not write the checkpoint of step 2" in caplog.text
    assert names(tmp_path / "run" / "checkpoints") == ["step-000004"]


def test_resume_drops_later_and_torn_metrics_lines(tmp_path):
    """A crash can leave metrics lines after the checkpoint, the last one half written."""
    from dpokit.train.logging import MetricsLog, read_metrics

    log = MetricsLog(str(tmp_path / "metrics.jsonl"))
    for step in range(1, 6):
        log.write({"step": step, "loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')
    log.truncate_after(4)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
