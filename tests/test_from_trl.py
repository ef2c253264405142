"""`dpokit train --from-trl FILE`: the translation table, its errors, and parity with TRL's DPOTrainer."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from conftest import make_pairs, write_jsonl
from dpokit.config import ConfigError, from_dict
from dpokit.from_trl import HARMLESS, LOSS_TYPES, UNSUPPORTED, load_trl_config, translate

BASE = {"model_name_or_path": "some/model", "dataset_name": "trl-lib/ultrafeedback_binarized"}


def tr(**keys):
    return translate({**BASE, **keys}, source="trl.yaml")


def test_every_listed_key_maps():
    t = tr(dataset_train_split="train_prefs", loss_type="sigmoid", beta=0.05, max_length=2048,
           max_prompt_length=512, padding_free=True, precompute_ref_log_probs=True, learning_rate=5e-7,
           per_device_train_batch_size=4, gradient_accumulation_steps=8, num_train_epochs=2, max_steps=100,
           warmup_ratio=0.1, lr_scheduler_type="cosine", bf16=True, gradient_checkpointing=False, use_peft=True,
           lora_r=32, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], output_dir="out",
           report_to="wandb", seed=7, logging_steps=5)
    c = t.config
    assert c["model"] == {"name_or_path": "some/model", "dtype": "float32", "gradient_checkpointing": False}
    assert c["lora"] == {"enabled": True, "r": 32, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert c["data"] == {"train": "trl-lib/ultrafeedback_binarized", "split": "train_prefs", "max_length": 2048,
                         "max_prompt_length": 512, "truncation_mode": "keep_end"}
    assert c["loss"] == {"name": "dpo", "beta": 0.05}
    assert c["reference"] == {"precompute": True}
    tc = c["train"]
    assert (tc["layout"], tc["lr"], tc["batch_size"], tc["grad_accum"], tc["epochs"], tc["max_steps"]) == \
        ("packed", 5e-7, 4, 8, 2, 100)
    assert (tc["warmup_ratio"], tc["scheduler"], tc["mixed_precision"], tc["output_dir"], tc["report_to"],
            tc["seed"], tc["log_every"]) == (0.1, "cosine", "bf16", "out", ["wandb"], 7, 5)
    from_dict(c)  # a valid dpokit config


def test_trl_defaults_are_written_out():
    c = tr().config
    assert c["loss"] == {"name": "dpo", "beta": 0.1}
    assert c["model"]["dtype"] == "float32" and c["model"]["gradient_checkpointing"] is True
    assert c["data"]["max_length"] == 1024
    t = c["train"]
    assert (t["lr"], t["epochs"], t["scheduler"], t["warmup_ratio"], t["log_every"], t["save_every"],
            t["report_to"], t["mixed_precision"], t["output_dir"]) == \
        (1e-6, 3, "linear", 0.0, 10, 500, [], "bf16", "trainer_output")
    assert tr(bf16=False).config["train"]["mixed_precision"] == "no"
    assert tr(fp16=True).config["train"]["mixed_precision"] == "fp16"


@pytest.mark.parametrize("kind", sorted(LOSS_TYPES))
def test_every_trl_loss_type_builds(kind):
    extra = {"label_smoothing": 0.01} if kind == "exo_pair" else {}
    t = tr(loss_type=kind, beta=0.2, **extra)
    config = from_dict(t.config)
    name = LOSS_TYPES[kind][0]
    assert config.loss["name"] == name
    if kind != "sft":
        assert config.loss["beta"] == 0.2  # TRL's one beta, even where dpokit's default differs


def test_loss_list_with_weights_is_a_composite_and_modifiers():
    t = tr(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], beta=0.05, ld_alpha=0.5,
           use_weighting=True)
    loss = t.config["loss"]
    assert loss["components"] == [
        {"name": "dpo", "weight": 0.8, "beta": 0.05},
        {"name": "bco_pair", "weight": 0.2, "beta": 0.05, "running_mean": False},
        {"name": "sft", "weight": 1.0, "length_normalize": True},
    ]
    assert loss["modifiers"] == {"ld_alpha": {"alpha": 0.5, "apply_to_reference": True}, "wpo": {"clamp": False}}
    assert any(w.startswith("ld_alpha:") for w in t.warnings)
    from_dict(t.config)


def test_rpo_alpha_label_smoothing_and_f_divergence():
    assert tr(rpo_alpha=0.5).config["loss"] == {"components": [
        {"name": "dpo", "weight": 1.0, "beta": 0.1}, {"name": "sft", "weight": 0.5, "length_normalize": True}]}
    t = tr(label_smoothing=0.1)
    assert t.config["loss"] == {"name": "cdpo", "beta": 0.1, "eps": 0.1}
    assert any("TRL >= 1.0 ignores" in w for w in t.warnings)
    assert tr(loss_type="robust", label_smoothing=0.2).config["loss"] == {"name": "rdpo", "beta": 0.1, "eps": 0.2}
    assert tr(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3).config["loss"] == \
        {"name": "fdpo", "beta": 0.1, "f_divergence_type": "alpha_divergence", "alpha": pytest.approx(0.7)}
    with pytest.raises(ConfigError, match="f_divergence_type: .*not to 'hinge'"):
        tr(loss_type="hinge", f_divergence_type="js_divergence")
    with pytest.raises(ConfigError, match="label_smoothing: must be > 0 with loss_type exo_pair"):
        tr(loss_type="exo_pair")


def test_unknown_and_unsupported_keys_are_named():
    with pytest.raises(ConfigError, match=r"^trl\.yaml: .*learnig_rate: unknown TRL DPO option; did you mean "
                                          r"'learning_rate'\?"):
        tr(learnig_rate=1e-6)
    with pytest.raises(ConfigError, match="load_in_4bit: not supported"):
        tr(load_in_4bit=True)
    with pytest.raises(ConfigError, match="dataset_config: dpokit cannot select"):
        tr(dataset_config="default")
    with pytest.raises(ConfigError, match="loss_type: unknown TRL loss type 'sigmod'; did you mean 'sigmoid'"):
        tr(loss_type="sigmod")
    with pytest.raises(ConfigError, match="num_train_epochs: 0.5: dpokit trains whole epochs"):
        tr(num_train_epochs=0.5)
    with pytest.raises(ConfigError, match="optim: 'adafactor' is not supported"):
        tr(optim="adafactor")
    with pytest.raises(ConfigError, match="model_name_or_path: required.*learnig_rate"):  # every error, one line
        translate({"dataset_name": "x/y", "learnig_rate": 1}, source="trl.yaml")
    assert set(HARMLESS).isdisjoint(UNSUPPORTED)


def test_harmless_keys_warn():
    t = tr(push_to_hub=True, hub_model_id="me/model", dataloader_num_workers=4, lora_r=8)
    keys = sorted(w.split(":")[0] for w in t.warnings)
    assert keys == ["dataloader_num_workers", "hub_model_id", "lora_r", "push_to_hub"]


def test_eval_and_local_directory(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_pairs(4))
    write_jsonl(tmp_path / "test.jsonl", make_pairs(2))
    c = translate({"model_name_or_path": "m", "dataset_name": str(tmp_path), "eval_strategy": "steps",
                   "eval_steps": 20}).config
    assert c["data"]["train"] == str(tmp_path / "train.jsonl") and c["data"]["eval"] == str(tmp_path / "test.jsonl")
    assert c["train"]["eval_every"] == 20 and "split" not in c["data"]
    with pytest.raises(ConfigError, match="dataset_test_split: dpokit reads a hub dataset's eval set"):
        tr(eval_strategy="steps")


def test_cli_reports_bad_files_in_one_line(tmp_path, capsys):
    from dpokit.cli import main

    bad = tmp_path / "trl.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "learnig_rate": 1e-6}))
    assert main(["train", "--from-trl", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "learnig_rate" in err
    bad.write_text("a: [1\n")
    assert main(["train", "--from-trl", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # CONFIG and --from-trl exclude each other
        main(["train", "x.yaml", "--from-trl", str(bad)])
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump({**BASE, "beta": 0.3}))
    config = load_trl_config(str(good), ["loss.beta=0.5", "train.lr=2e-6"])  # --set applies on top
    assert config.loss["beta"] == 0.5 and config.train.lr == 2e-6


# ------------------------------------------------------------------------------------------------
PARITY = {
    "sigmoid-linear": {"loss_type": "sigmoid", "beta": 0.1, "lr_scheduler_type": "linear"},
    "composite-wpo-ld-cosine": {"loss_type": ["sigmoid", "ipo"], "loss_weights": [0.8, 0.2], "use_weighting": True,
                                "ld_alpha": 0.5, "lr_scheduler_type": "cosine", "warmup_steps": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PARITY))
def test_same_losses_as_trl_dpo_trainer(case, tmp_path, tokenizer):
    """One TRL YAML through `trl dpo`'s own entry point and through `dpokit train --from-trl`."""
    from trl.scripts.dpo import main as trl_main, make_parser

    from dpokit.cli import main
    from dpokit.tiny import tiny_llama

    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, tokenizer=tokenizer,
               seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir.mkdir()
    # 4 pairs, 2 per micro-batch, 2 micro-batches per step: every step sees the whole set, so the
    # samplers' orders (TRL: torch's RandomSampler; dpokit: its seeded permutation) cannot differ in effect
    write_jsonl(data_dir / "train.jsonl", make_pairs(4, seed=3))
    trl_yaml = {"model_name_or_path": str(model_dir), "dataset_name": str(data_dir), "learning_rate": 5e-3,
                "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 3, "seed": 0,
                "bf16": False, "max_length": 64, "logging_steps": 1, "save_strategy": "steps", "save_steps": 3,
                "report_to": "none", "output_dir": str(tmp_path / "trl"), **PARITY[case]}
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(trl_yaml))

    trl_main(*make_parser().parse_args_and_config(["--config", str(path)], fail_with_unknown_args=False))
    (state_file,) = glob.glob(str(tmp_path / "trl" / "checkpoint-*" / "trainer_state.json"))
    trl_log = [r for r in json.load(open(state_file))["log_history"] if "loss" in r]

    out = tmp_path / "dpokit"
    assert main(["train", "--from-trl", str(path), "--set", f"train.output_dir={out}",
                 "--set", "train.progress_bar=false"]) == 0
    ours = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    ours = [r for r in ours if "loss" in r]

    assert [r["step"] for r in trl_log] == [r["step"] for r in ours] == [1, 2, 3]
    for theirs, mine in zip(trl_log, ours):
        for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (case, mine["step"], key)
    assert ours[-1]["loss"] < ours[0]["loss"] - 1e-3  # the steps trained: later losses are not the first
