"""The accelerate configs shipped in examples/accelerate/ parse, name the engine they promise and
point at DeepSpeed files that exist and leave to dpokit what it fills in."""

import json
import os

import pytest
import yaml

from _launch import REPO

EXAMPLES = os.path.join(REPO, "examples", "accelerate")
EXPECTED = {"ddp.yaml": "MULTI_GPU", "fsdp1.yaml": "FSDP", "fsdp2.yaml": "FSDP",
            "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = os.path.join(EXAMPLES, name)
    config = ClusterConfig.from_yaml_file(path)
    assert str(config.distributed_type).split(".")[-1] == EXPECTED[name]
    if name.startswith("fsdp"):
        assert config.fsdp_config["fsdp_version"] == int(name[4])
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if name.startswith("deepspeed"):
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        with open(os.path.join(REPO, ds_file)) as handle:
            ds = json.load(handle)
        stage = int(name[-6])
        assert ds["zero_optimization"]["stage"] == stage
        assert config.deepspeed_config["zero3_init_flag"] == (stage == 3)
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", key  # filled from the dpokit config (dpokit.distributed.fill_deepspeed_auto)
        if stage == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    with open(path) as handle:
        assert "num_processes" in yaml.safe_load(handle)
