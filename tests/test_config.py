import pytest

from dpokit.config import ConfigError, from_dict, load_config
from dpokit.preflight import checked_config

from conftest import train_config


def base(**sections):
    return train_config("some/model", "data.jsonl", "/tmp/out", **sections)


def test_valid_config_and_overrides():
    config = from_dict(base(), ["train.lr=3e-6", "loss.beta=0.2", "train.report_to=[]"])
    assert config.train.lr == 3e-6 and config.loss["beta"] == 0.2 and config.train.report_to == []


def test_gpu_options_are_accepted():
    config = checked_config(base(train={"projection": "liger"}, model={"attn_implementation": "auto"}))
    assert config.train.projection == "liger" and config.model.attn_implementation == "auto"
    assert checked_config(base()).train.projection == "chunked"


@pytest.mark.parametrize("raw, message", [
    (base(train={"lrr": 1.0}), "unknown key 'train.lrr'; did you mean 'lr'"),
    (base(modle={}), "unknown key 'modle'"),
    (base(train={"batch_size": "8"}), "train.batch_size: expected an integer"),
    (base(train={"batch_size": 0}), "train.batch_size: must be > 0"),
    (base(train={"scheduler": "cosin"}), "train.scheduler: 'cosin' is not one of"),
    (base(loss={"name": "dpo", "beta": 0.1, "gama": 1}), "no hyperparameter"),
    (base(loss={"name": "dpoo"}), "unknown loss 'dpoo'"),
    (base(loss={"name": "simpo"}, reference={"kind": "path", "path": "x"}), "reference-free"),
    (base(reference={"kind": "lora_disabled"}), "needs lora.enabled"),
    (base(reference={"kind": "path"}), "reference.path: required"),
    (base(data={"eval_fraction": 1.5}), "data.eval_fraction"),
    (base(train={"layout": "nope"}), "train.layout"),
    (base(train={"projection": "fused"}), "train.projection: 'fused' is not one of"),
    (base(model={"name_or_path": ""}), "model.name_or_path: required"),
])
def test_bad_configs_fail_before_loading(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        checked_config(raw)


def test_yaml_file_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        checked_config(str(path))
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):  # safe_load refuses arbitrary objects
        checked_config(str(path))
    with pytest.raises(ConfigError, match="not found"):
        checked_config(str(tmp_path / "missing.yaml"))


def test_example_configs_are_valid():
    import glob
    import os

    from conftest import REPO

    paths = sorted(glob.glob(os.path.join(REPO, "examples", "*.yaml")))
    assert paths, "examples/ must hold configs"
    for path in paths:
        load_config(path)
