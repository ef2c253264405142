"""Worker (under torchrun, gloo on CPU): dpokit's trainer under FSDP2, and the engine under FSDP1.

accelerate enables FSDP only on GPUs. Here its state is switched to FSDP over the CPU process
group, so the code that runs on GPUs runs as is: accelerate's FSDP2 preparation of the policy,
the frozen reference sharded by ``dpokit.distributed.prepare_frozen``, the log-prob engine's
forward passes through the sharded root, gradient clipping and no_sync, the checkpoint through
``accelerate.save_state``/``load_state`` and the gathered final weights.

usage: _fsdp_worker.py FULL.yaml CUT.yaml CUT_STEP MODEL_DIR
"""

import os
import shutil
import sys
import types

import accelerate
import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

PLUGINS = {
    2: dict(fsdp_version=2, reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT"),
    1: dict(fsdp_version=1, use_orig_params=True, state_dict_type="SHARDED_STATE_DICT"),
}


def plugin(version: int) -> FullyShardedDataParallelPlugin:
    return FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=["LlamaDecoderLayer"], **PLUGINS[version])


class FSDPOnCPU(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.state.device = PartialState._shared_state["device"] = torch.device("cpu")
        self.state.fsdp_plugin = plugin(2)


def train_fsdp2(full_cfg: str, cut_cfg: str, cut_step: int) -> None:
    accelerate.Accelerator = FSDPOnCPU  # what the trainer constructs
    from dpokit.config import load_config
    from dpokit.reference import ModelReference
    from dpokit.train import Trainer

    trainer = Trainer(load_config(full_cfg))
    assert trainer.engine_kind == "fsdp2" and trainer.sharded_state
    assert isinstance(trainer.reference, ModelReference) and type(trainer.reference.model).__name__.startswith("FSDP")
    trainer.fit()
    full_dir, cut_dir = trainer.output_dir, load_config(cut_cfg).train.output_dir
    if dist.get_rank() == 0:
        shutil.copytree(full_dir, cut_dir)
        shutil.rmtree(os.path.join(cut_dir, "final"))
        for name in os.listdir(os.path.join(cut_dir, "checkpoints")):
            if int(name.split("-")[1]) > cut_step:
                shutil.rmtree(os.path.join(cut_dir, "checkpoints", name))
    dist.barrier()
    result = Trainer(load_config(cut_cfg)).fit(resume=True)
    assert result["status"] == "completed", result


def engine_fsdp1(model_dir: str) -> None:
    """FSDP1-wrapped policy and frozen reference: log-probs and (full) gradients equal one process's."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import AutoModelForCausalLM

    from dpokit.distributed import _fsdp1_wrap, prepare_frozen
    from dpokit.scoring.lm.engine import LogProbEngine
    from dpokit.losses import Needs

    rank, world = dist.get_rank(), dist.get_world_size()
    fake = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin(1)), distributed_type=DistributedType.FSDP,
                                 is_fsdp2=False, num_processes=world, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = lambda n: [int(x) for x in torch.randint(3, 250, (n,), generator=g)]
    groups = [(ids(5 + i), [ids(2 + i % 3), ids(4)]) for i in range(5)]  # 5 pairs: 2 + 3 rows per process
    engine = LogProbEngine(Needs(), 0)
    full = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = engine.token_logprobs(full, groups)
    (expected.sums.sum() / len(groups)).backward()
    lo, hi = len(groups) * rank // world, len(groups) * (rank + 1) // world
    policy = _fsdp1_wrap(fake, AutoModelForCausalLM.from_pretrained(model_dir))
    got = engine.token_logprobs(policy, groups[lo:hi])
    torch.testing.assert_close(got.sums, expected.sums[2 * lo:2 * hi])
    (got.sums.sum() * world / len(groups)).backward()  # FSDP averages gradients over processes
    with FSDP.summon_full_params(policy, with_grads=True):
        grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad for n, p in policy.named_parameters()}
        for name, param in full.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-5, msg=name)
    reference = prepare_frozen(fake, AutoModelForCausalLM.from_pretrained(model_dir))
    with torch.no_grad():
        torch.testing.assert_close(engine.token_logprobs(reference, groups[lo:hi]).sums, expected.sums[2 * lo:2 * hi])


if __name__ == "__main__":
    full_cfg, cut_cfg, cut_step, model_dir = sys.argv[1:5]
    train_fsdp2(full_cfg, cut_cfg, int(cut_step))
    engine_fsdp1(model_dir)
    print("fsdp worker: ok")
