"""FSDP on two CPU processes: the trainer under FSDP2 (sharded policy and sharded frozen reference)
matches one process, and resumes from its sharded checkpoint; the engine under FSDP1 gives the
same log-probs and gradients. See _fsdp_worker.py for how FSDP runs without GPUs."""

import os

import pytest

from conftest import make_pairs, train_config, write_jsonl
from dpokit.config import from_dict
from dpokit.train import Trainer

from _launch import HERE, final_weights, gloo_available, losses, max_weight_diff, torchrun, write_config

pytestmark = [pytest.mark.slow,  # multi-process runs
              pytest.mark.skipif(not gloo_available(), reason="needs torch.distributed with gloo")]


def test_fsdp_matches_one_process_and_resumes_from_its_sharded_checkpoint(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(20, seed=7))

    def config(out, batch):
        return train_config(tiny_model_dir, data, out, train={"batch_size": batch, "max_steps": 4, "save_every": 2,
                                                               "keep_last": 5})

    full, cut = write_config(config(tmp_path / "fsdp", 2), tmp_path / "fsdp.yaml"), tmp_path / "cut.yaml"
    write_config(config(tmp_path / "cut", 2), cut)
    out = torchrun([os.path.join(HERE, "_fsdp_worker.py"), full, str(cut), "2", tiny_model_dir])
    assert "fsdp worker: ok" in out
    Trainer(from_dict(config(tmp_path / "one", 4))).fit()

    one, fsdp = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert [r["step"] for r in fsdp] == [1, 2, 3, 4]
    for a, b in zip(one, fsdp):
        for key in ("loss", "rewards/margins", "grad_norm", "tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=2e-6), (a["step"], key)
    diff = max_weight_diff(final_weights(tmp_path / "one"), final_weights(tmp_path / "fsdp"))
    print(f"FSDP2 2 processes vs 1 process: max abs weight diff {diff:.3g}")
    assert diff < 1e-5
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    assert (checkpoint / "engine_state.json").exists() and (checkpoint / "engine").is_dir()
    diff = max_weight_diff(final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "cut"))
    print(f"FSDP2 resumed from its sharded checkpoint vs uninterrupted: max abs weight diff {diff:.3g}")
    assert diff < 1e-6
    assert [r["loss"] for r in losses(tmp_path / "cut")] == pytest.approx([r["loss"] for r in fsdp], abs=1e-6)
