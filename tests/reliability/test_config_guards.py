"""Configs: unknown keys, wrong types, impossible combinations and out-of-range hyperparameters
fail before any model is loaded, naming the key."""

import math

import pytest
import yaml

from dpokit.config import ConfigError, from_dict
from dpokit.preflight import checked_config
from dpokit.losses import get_loss, list_losses

from conftest import train_config


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model (or tokenizer) fails the test."""
    import transformers

    from dpokit import models  # the model families import its loaders when they load (dpokit.families)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded although the config is invalid")

    for name in ("load_causal_lm", "load_policy", "load_tokenizer"):
        monkeypatch.setattr(models, name, forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


def base(**sections):
    return train_config("some/model", "data.jsonl", "/tmp/out", **sections)


@pytest.mark.parametrize("raw, message", [
    (base(train={"lr": 1e-5, "bogus": 1}), "unknown key 'train.bogus'"),
    (base(data={"on_extra_columns": "drop"}), "data.on_extra_columns: 'drop' is not one of"),
    (base(train={"epochs": 1.5}), "train.epochs: expected an integer"),
    (base(train={"max_bad_steps": 0}), "train.max_bad_steps: must be > 0"),
    (base(train={"keep_last": 0}), "train.keep_last: must be > 0"),
    (base(loss={"name": "dpo", "beta": 0}), "dpo.beta: must be > 0"),
    (base(loss={"name": "dpo", "beta": -0.1}), "dpo.beta: must be > 0"),
    (base(loss={"name": "dpo", "beta": float("nan")}), "dpo.beta: must be finite"),
    (base(loss={"name": "dpo", "beta": "1e-3"}), "dpo.beta: expected a number"),
    (base(loss={"name": "rdpo", "eps": 0.5}), "eps (label-flip rate) must be in [0, 0.5)"),
    (base(loss={"name": "cdpo", "eps": -0.1}), "eps (label-flip rate) must be in [0, 0.5)"),
    (base(loss={"name": "ipo", "beta": 0.0}), "ipo.beta: must be > 0"),
    (base(loss={"name": "simpo", "label_smoothing": 0.5}), "simpo.label_smoothing: must be in [0, 0.5)"),
    (base(loss={"name": "kto", "desirable_weight": -1.0}, data={"kind": "unpaired"}), "desirable_weight: must be >= 0"),
    (base(loss={"name": "fdpo", "f_divergence_type": "alpha_divergence", "alpha": 2.0}), "alpha must be in [0, 1]"),
    (base(loss={"name": "fdpo", "f_divergence_type": "kl"}), "f_divergence_type must be one of"),
    (base(loss={"name": "rpo", "variant": "median"}), "variant must be 'sum' or 'mean'"),
    (base(loss={"name": "dpo + 0.5*rdpo", "eps": 0.7}), "eps (label-flip rate)"),
    (dict(base(), loss={"components": [{"name": "dpo", "beta": 0.0}, {"name": "sft"}]}), "dpo.beta: must be > 0"),
    (base(loss={"name": "simpo"}, reference={"path": "/models/ref"}), "reference.path: loss 'simpo' is reference-free"),
    (base(loss={"name": "simpo"}, reference={"precompute": True}), "reference.precompute: loss 'simpo' is reference-free"),
    (base(loss={"name": "orpo"}, reference={"kind": "copy"}), "is reference-free"),
    (base(reference={"kind": "lora_disabled"}), "needs lora.enabled"),
    (base(reference={"precompute": True, "sync_every": 2}), "exclude each other"),
    (base(train={"layout": "diagonal"}), "train.layout"),
])
def test_bad_configs_fail_at_validation(raw, message):
    with pytest.raises(ConfigError) as info:
        checked_config(raw)
    assert message in str(info.value)


def test_cli_reports_bad_config_before_loading_anything(tmp_path, capsys, no_model_loading):
    from dpokit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base(loss={"name": "rdpo", "eps": 0.5})))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error: ") and "c.yaml: loss: rdpo: eps" in err
    assert main(["train", str(path), "--set", "loss.eps=0.2", "--set", "train.lrr=1"]) == 2
    assert "unknown key 'train.lrr'; did you mean 'lr'" in capsys.readouterr().err


def test_every_registered_loss_passes_with_its_defaults_and_nearby_values():
    """The hyperparameter checks refuse no valid configuration: defaults, and defaults scaled by
    0.5 (and x2 where that stays in range), validate for every registered loss."""
    from dpokit.losses.checks import check_loss

    for spec in list_losses():
        check_loss(get_loss(spec.name))
        for key, value in spec.defaults.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
                continue
            check_loss(get_loss(spec.name, **{key: value * 0.5}))


def test_probe_catches_only_hyperparameter_errors():
    """modpo relates its weights to the data's score columns: a valid 3-objective setting must
    pass although no data is there yet (the synthetic layer skips losses that read extras)."""
    from dpokit.losses.checks import check_loss

    check_loss(get_loss("modpo", weights=[0.4, 0.3, 0.3]))
    with pytest.raises(ValueError, match="weights"):
        check_loss(get_loss("modpo", weights=[0.0, 1.0]))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the behaviour without a GPU")
def test_fp16_without_gpu_fails_before_the_model_loads(tmp_path, pairs_file, no_model_loading):
    from dpokit.train import Trainer

    config = from_dict(train_config("some/model", pairs_file, tmp_path / "run", train={"mixed_precision": "fp16"}))
    with pytest.raises(ConfigError, match="train.mixed_precision: fp16 needs a GPU"):
        Trainer(config)
    from dpokit.distributed import resolve_mixed_precision

    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("bf16") == "bf16"


def test_layout_the_model_cannot_take_fails_at_trainer_start(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    from dpokit.scoring.lm import layouts
    from dpokit.train import Trainer
    from dpokit.train import trainer as trainer_module

    calls = []
    monkeypatch.setattr(layouts, "layout_supported",
                        lambda model, name, probe=False: (calls.append(name) or False, "no custom masks here"))
    monkeypatch.setattr(trainer_module.Trainer, "_load_data",
                        lambda self: (_ for _ in ()).throw(AssertionError("data loaded before the layout check")))
    config = from_dict(train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"layout": "prompt_shared"}))
    with pytest.raises(ConfigError, match="train.layout: 'prompt_shared' cannot run on this model: no custom masks"):
        Trainer(config)
    assert calls == ["prompt_shared"]
