"""Start ``torchrun`` jobs (gloo on CPU) from a test and compare their runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def torchrun(args: Sequence[str], nproc: int = 2, timeout: int = 300) -> str:
    """``torchrun --standalone --nproc_per_node N ARGS`` (a free rendezvous port, one CPU thread per
    process); returns its output, or fails the test with the tail of it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"), HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-6000:]}")
    return output


def train_cli(config_path: str, *extra: str, nproc: int = 2) -> str:
    return torchrun(["-m", "dpokit.cli", "train", config_path, *extra], nproc=nproc)


def write_config(raw: dict, path) -> str:
    import yaml

    with open(path, "w") as handle:
        yaml.safe_dump(raw, handle)
    return str(path)


def losses(run_dir) -> List[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def max_weight_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def checkpoint_weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def cut_run(src, dst, keep_step: int) -> None:
    """Copy a run directory as it was right after checkpoint ``keep_step`` (later checkpoints and
    ``final/`` removed), to resume from there."""
    import shutil

    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "final"), ignore_errors=True)
    for name in os.listdir(os.path.join(dst, "checkpoints")):
        if name.startswith("step-") and int(name.split("-")[1]) > keep_step:
            shutil.rmtree(os.path.join(dst, "checkpoints", name))


def gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()
