"""The command line: losses, train, eval, demo (quick)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from dpokit.cli import main

from conftest import train_config


def test_losses_table_and_json(capsys):
    assert main(["losses"]) == 0
    table = capsys.readouterr().out
    assert "dpo (sigmoid)" in table and "simpo" in table and "2305.18290" in table
    assert main(["losses", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["dpo"]["needs"]["reference"] is True
    assert entries["simpo"]["needs"]["reference"] is False
    assert entries["ipo"]["hyperparameters"] == {"beta": 0.1, "length_normalize": True}
    assert all(e["source"] for e in entries.values())


def test_train_then_eval(tiny_model_dir, pairs_file, tmp_path, capsys):
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"max_steps": 3})
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config_path), "--set", "train.lr=1e-2", "--set", "loss.beta=0.2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["step"] == 3
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-2 and saved["loss"]["beta"] == 0.2
    final = str(tmp_path / "run" / "final")
    assert main(["eval", "--model", final, "--data", pairs_file, "--ref", tiny_model_dir, "--loss", "dpo"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_pairs"] == 32
    for key in ("preference_accuracy", "reward_margin_mean", "loss"):
        assert isinstance(report[key], float)


def test_bad_config_is_reported_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name_or_path: x}\ndata: {train: y}\ntrain: {bacth_size: 3}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown key 'train.bacth_size'; did you mean 'batch_size'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_quick_runs_and_writes_summary(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "dpokit.cli", "demo", "--quick", "--output-dir", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    for side in ("before", "after"):
        assert set(summary[side]) >= {"reward", "preference_accuracy", "kl", "length"}
    assert summary["after"]["reward"] > summary["before"]["reward"]
    assert "task reward" in proc.stdout
    assert (out / "train" / "final" / "config.json").exists()
