"""Training-time monitoring: options, the logged indicators, and the warning rules."""

import pytest

from dpokit.config import ConfigError, from_dict
from dpokit.train.monitor import Monitor, MonitorOptions

from conftest import read_jsonl, train_config



def test_options_are_validated():
    assert MonitorOptions.parse(True) == MonitorOptions()
    assert MonitorOptions.parse({"every": 5, "judge": "parity"}).every == 5
    with pytest.raises(ConfigError, match="train.monitor.evry"):
        MonitorOptions.parse({"evry": 5})
    with pytest.raises(ConfigError, match="train.monitor.examples"):
        MonitorOptions.parse({"examples": 0})
    with pytest.raises(ConfigError, match="train.monitor.judge"):
        MonitorOptions.parse({"judge": "no_such_judge"})
    with pytest.raises(ConfigError, match="train.monitor"):
        MonitorOptions.parse("yes")


def test_config_accepts_the_monitor_key(tmp_path):
    raw = train_config("some/model", "data.jsonl", tmp_path, train={"monitor": {"every": 3}})
    assert from_dict(raw).train.monitor == {"every": 3}
    assert from_dict(train_config("some/model", "data.jsonl", tmp_path)).train.monitor is False


def _record(**values):
    return {f"monitor/{k}": v for k, v in values.items()}


def test_warnings_fire_once_when_thresholds_are_crossed():
    monitor = Monitor(MonitorOptions(chosen_drop=1.0, entropy_drop=0.1, mass_drop=0.1, kl_max=5.0))
    assert monitor.check(_record(accuracy=0.5, drift_chosen=0.0, topk_entropy_chosen=2.0, topk_mass_chosen=0.9)) == []
    # chosen likelihood down 0.5 nats only: no warning; entropy rising
    assert monitor.check(_record(accuracy=0.8, drift_chosen=-0.5, topk_entropy_chosen=2.5, topk_mass_chosen=0.9)) == []
    # chosen down 2 nats while accuracy rose; entropy falls 20% below its peak after rising; mass down 20%
    fired = monitor.check(_record(accuracy=0.9, drift_chosen=-2.0, topk_entropy_chosen=2.0, topk_mass_chosen=0.7,
                                  kl=6.0))
    assert set(fired) == {"likelihood_displacement", "topk_entropy_reversal", "topk_mass_drop", "kl_high"}
    assert monitor.check(_record(accuracy=0.9, drift_chosen=-3.0, topk_entropy_chosen=1.0, topk_mass_chosen=0.5,
                                 kl=9.0)) == []  # each warning once
    assert len(monitor.warnings) == 4 and all(w["message"] for w in monitor.warnings)


def test_no_displacement_warning_when_accuracy_does_not_rise():
    monitor = Monitor(MonitorOptions())
    monitor.check(_record(accuracy=0.7, drift_chosen=0.0))
    assert monitor.check(_record(accuracy=0.6, drift_chosen=-5.0)) == []
    # a steadily falling entropy (no rise first) is not a reversal
    monitor = Monitor(MonitorOptions())
    for value in (3.0, 2.5, 2.0):
        assert "topk_entropy_reversal" not in monitor.check(_record(topk_entropy_chosen=value))


def test_training_logs_the_indicators(trained_run):
    lines = [r for r in read_jsonl(trained_run["run"] + "/metrics.jsonl") if any(k.startswith("monitor/") for k in r)]
    assert [r["step"] for r in lines] == [2, 4]  # every eval_every steps (and the last step)
    for record in lines:
        for key in ("accuracy", "margin", "drift_chosen", "drift_rejected", "drift_unseen", "logps_chosen",
                    "topk_mass_chosen", "topk_entropy_chosen", "judge_reward", "kl", "length", "distinct_2",
                    "topk_mass", "topk_entropy"):
            assert isinstance(record[f"monitor/{key}"], float), key
        assert 0.0 < record["monitor/topk_mass"] <= 1.0 and 0.0 <= record["monitor/topk_entropy"] <= 3.33
        assert record["monitor/kl"] >= 0.0


def test_monitoring_leaves_training_unchanged(trained_run, tmp_path):
    """Sampling inside the monitor uses a forked RNG: the same run without it logs the same losses."""
    import yaml

    from dpokit.cli import main

    raw = yaml.safe_load((trained_run["root"] / "c.yaml").read_text())
    raw["train"].pop("monitor")
    raw["train"].update(output_dir=str(tmp_path / "plain"), max_steps=3)  # the monitor ran after step 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0

    def losses(path):
        return [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]

    assert losses(tmp_path / "plain" / "metrics.jsonl") == losses(trained_run["run"] + "/metrics.jsonl")[:3]
