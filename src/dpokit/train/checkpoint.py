"""Atomic, verified checkpoints.

A checkpoint is a directory ``checkpoints/step-000120/`` holding:

* ``model.safetensors``: the trainable state (full weights, or only the LoRA adapter weights),
* ``optimizer.pt``, ``scheduler.pt``, ``extra.pt``: optimizer/scheduler/loss state and torch RNG
  states, read back with ``torch.load(weights_only=True)``,
* ``trainer_state.json``: step, epoch, position in the epoch, Python/NumPy RNG states,
* ``manifest.json`` (written last): size and BLAKE2 digest of every file.

It is written into a temporary sibling directory, flushed to disk, then renamed into place, so a
crash or a full disk while saving leaves the previous checkpoint intact; on load the manifest is
checked and a damaged checkpoint is refused (the loader falls back to the previous one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, UnsafePathError
from ..models import trainable_state  # noqa: F401  (what a checkpoint stores)
from ..paths import safe_join

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
TEMP_DIR = re.compile(r"^\.tmp-step-\d+-(\d+)$")
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "extra.pt", "trainer_state.json")
# FSDP / DeepSpeed checkpoints: accelerate's save_state output under ENGINE_DIR/ instead of model/optimizer files
ENGINE_DIR = "engine"
ENGINE_INDEX = "engine_state.json"
ENGINE_REQUIRED_FILES = ("scheduler.pt", "extra.pt", "trainer_state.json", ENGINE_INDEX)




def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state()}
    return {
        "python": [state["python"][0], list(state["python"][1]), state["python"][2]],
        "numpy": [state["numpy"][0], state["numpy"][1].tolist(), *state["numpy"][2:]],
    }


def restore_rng(state: Dict[str, Any], torch_states: Dict[str, torch.Tensor]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
    torch.set_rng_state(torch_states["cpu"])
    if torch.cuda.is_available() and "cuda" in torch_states:
        cuda = torch_states["cuda"]
        torch.cuda.set_rng_state_all([cuda[i] for i in range(cuda.shape[0])])


def step_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:06d}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temp(directory: str) -> List[str]:
    """Delete temporary checkpoint directories left by processes that died while saving."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        match = TEMP_DIR.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed



def _write_run_state(tmp: str, step: int, scheduler, trainer_state: Dict[str, Any],
                     loss_state: Optional[Dict[str, Any]]) -> None:
    """Scheduler, loss state, RNG states and trainer state: what every checkpoint kind holds."""
    torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
    torch_states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        torch_states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    torch.save({"rng": torch_states, "loss": loss_state or {}}, os.path.join(tmp, "extra.pt"))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as handle:
        json.dump(dict(trainer_state, step=step, rng=rng_state()), handle)


def _read_run_state(path: str, scheduler) -> Dict[str, Any]:
    """Counterpart of :func:`_write_run_state`: restores the scheduler and the RNG states and
    returns the trainer state (with ``loss_state``)."""
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    extra = torch.load(os.path.join(path, "extra.pt"), weights_only=True)
    with open(os.path.join(path, "trainer_state.json")) as handle:
        state = json.load(handle)
    restore_rng(state["rng"], extra["rng"])
    state["loss_state"] = extra.get("loss", {})
    return state


def _seal_and_publish(tmp: str, final: str, directory: str) -> None:
    """Write the manifest (size and digest of every file, nested ones included), flush everything
    to disk, then rename the temporary directory into place."""
    files = sorted(os.path.relpath(os.path.join(root, name), tmp)
                   for root, _, names in os.walk(tmp) for name in names)
    manifest = {name: {"size": os.path.getsize(os.path.join(tmp, name)),
                       "blake2b": _digest(os.path.join(tmp, name))} for name in files}
    with open(os.path.join(tmp, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    for name in files:
        with open(os.path.join(tmp, name), "rb") as handle:
            os.fsync(handle.fileno())
    for root, _, _ in os.walk(tmp):
        _fsync_dir(root)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)

def save_checkpoint(
    directory: str,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: Dict[str, Any],
    loss_state: Optional[Dict[str, Any]] = None,
    keep_last: int = 2,
    extra_files: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
) -> str:
    """``extra_files``: more safetensors files (name -> tensors) the checkpoint holds, e.g. the OREO value
    model of the scorer (``value.safetensors``); the manifest covers them like every other file."""
    os.makedirs(directory, exist_ok=True)
    remove_stale_temp(directory)
    final = step_path(directory, step)
    tmp = os.path.join(directory, f".tmp-step-{step:06d}-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        save_file(trainable_state(model), os.path.join(tmp, "model.safetensors"))
        for name, tensors in (extra_files or {}).items():
            save_file(tensors, safe_join(tmp, name))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        _write_run_state(tmp, step, scheduler, trainer_state, loss_state)
        _seal_and_publish(tmp, final, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rotate(directory, keep_last)
    return final


def list_checkpoints(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = STEP_DIR.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


def rotate(directory: str, keep_last: int) -> None:
    for path in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def verify(path: str) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest (size and digest) and
    the manifest covers every file a checkpoint needs. Names in the manifest are plain file names."""
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.exists(manifest_path):
        raise CheckpointError(f"{path}: no manifest.json (incomplete checkpoint)")
    try:
        with open(manifest_path, "rb") as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{path}: manifest.json is unreadable ({err})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: manifest.json is not a mapping of files")
    engine = ENGINE_INDEX in manifest  # nested names are allowed under ENGINE_DIR/ only
    missing = [name for name in (ENGINE_REQUIRED_FILES if engine else REQUIRED_FILES) if name not in manifest]
    if missing:
        raise CheckpointError(f"{path}: the manifest lacks {missing} (incomplete checkpoint)")
    for name, entry in manifest.items():
        try:
            file = safe_join(path, name)
        except UnsafePathError as err:
            raise CheckpointError(f"{path}: manifest entry {name!r} is not a file of the checkpoint ({err})") from None
        nested = os.path.dirname(os.path.relpath(file, path))
        if nested and not (engine and nested.split(os.sep)[0] == ENGINE_DIR):
            raise CheckpointError(f"{path}: manifest entry {name!r} is not a plain file name")
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(entry.get("blake2b"), str):
            raise CheckpointError(f"{path}: manifest entry {name!r} is malformed")
        if not os.path.isfile(file):
            raise CheckpointError(f"{path}: {name} is missing")
        if os.path.getsize(file) != entry["size"] or _digest(file) != entry["blake2b"]:
            raise CheckpointError(f"{path}: {name} does not match its manifest (damaged checkpoint)")


def latest_valid_checkpoint(directory: str) -> Optional[str]:
    for path in reversed(list_checkpoints(directory)):
        try:
            verify(path)
            return path
        except CheckpointError as err:
            logger.warning("skipping checkpoint: %s", err)
    return None


def load_checkpoint(path: str, model, optimizer, scheduler) -> Dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG in place; returns the trainer state (with ``loss_state``)."""
    verify(path)
    weights = load_file(os.path.join(path, "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise CheckpointError(f"{path}: checkpoint has parameters the model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True, map_location="cpu"))
    return _read_run_state(path, scheduler)


# ---- checkpoints of engines that split the state over processes (FSDP, DeepSpeed) ------------------

def is_engine_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ENGINE_INDEX))


def save_engine_checkpoint(
    directory: str,
    step: int,
    accelerator,
    scheduler,
    trainer_state: Dict[str, Any],
    loss_state: Optional[Dict[str, Any]] = None,
    keep_last: int = 2,
) -> str:
    """Like :func:`save_checkpoint` for FSDP and DeepSpeed, where each process holds a shard of
    the weights and optimizer state. Every process calls it: ``accelerator.save_state`` writes the
    shards under ``engine/`` (FSDP's ``state_dict_type`` decides their form; DeepSpeed writes its
    ZeRO checkpoint); the main process adds the scheduler, loss and trainer state and a manifest
    covering every file, then renames the directory into place. ``directory`` must be on a file
    system every process sees."""
    from ..distributed import broadcast_object

    main = accelerator.is_main_process
    final = step_path(directory, step)
    tmp = os.path.join(directory, f".tmp-step-{step:06d}-{broadcast_object(os.getpid())}")
    if main:
        os.makedirs(directory, exist_ok=True)
        remove_stale_temp(directory)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(os.path.join(tmp, ENGINE_DIR))
    accelerator.wait_for_everyone()
    if main:
        try:
            _write_run_state(tmp, step, scheduler, trainer_state, loss_state)
            with open(os.path.join(tmp, ENGINE_INDEX), "w") as handle:
                json.dump({"format": "accelerate-save-state", "dir": ENGINE_DIR,
                           "distributed_type": str(accelerator.distributed_type),
                           "num_processes": accelerator.num_processes}, handle)
            _seal_and_publish(tmp, final, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rotate(directory, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_engine_checkpoint(path: str, accelerator, scheduler) -> Dict[str, Any]:
    """Restore a checkpoint written by :func:`save_engine_checkpoint` on every process (the caller
    verified it); returns the trainer state (with ``loss_state``)."""
    accelerator.load_state(os.path.join(path, ENGINE_DIR))
    return _read_run_state(path, scheduler)


# ---- the final model ---------------------------------------------------------------------------

def save_model_dir(model, tokenizer, path: str, state_dict=None, base_loader=None) -> str:
    """A directory ``AutoModelForCausalLM.from_pretrained`` loads: the weights (safetensors) and the
    tokenizer. A LoRA (PEFT) model is saved twice: its adapter under ``path/adapter`` and the merged
    model in ``path``. ``state_dict``: weights gathered from a sharded engine (FSDP, ZeRO-3); with
    LoRA the merged model is then rebuilt from ``base_loader()`` (the base weights) on the CPU, and
    without a loader only the adapter is saved."""
    os.makedirs(path, exist_ok=True)
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
    elif state_dict is None:
        model.save_pretrained(safe_join(path, "adapter"), safe_serialization=True)
        copy.deepcopy(model).merge_and_unload().save_pretrained(path, safe_serialization=True)
    else:
        adapter = safe_join(path, "adapter")
        model.save_pretrained(adapter, state_dict=state_dict, safe_serialization=True)
        if base_loader is not None:
            from peft import PeftModel

            PeftModel.from_pretrained(base_loader(), adapter).merge_and_unload().save_pretrained(
                path, safe_serialization=True)
        else:
            logger.warning("%s: only the adapter was saved (the base model was not loaded from a path)", path)
    tokenizer.save_pretrained(path)
    return path


def save_final_model(accelerator, model, tokenizer, path: str, sharded: bool, base_loader=None) -> str:
    """``final/`` of a run from the (possibly wrapped) training model; every process calls this.
    Sharded engines gather the whole weights on the main process first."""
    accelerator.wait_for_everyone()
    gathered = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        save_model_dir(accelerator.unwrap_model(model), tokenizer, path, gathered, base_loader if sharded else None)
    accelerator.wait_for_everyone()
    return path
