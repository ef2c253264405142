"""dpokit sweep: grid parsing, run names, resume, failures, summary, demo settings, the report."""

import json
import os

import pytest

from dpokit.errors import ConfigError
from dpokit.tasks.demo import DemoSettings
from dpokit.tasks.sweep import DemoBase, expand, parse_grid, run_name, run_sweep


def test_parse_grid_dotted_keys_and_types():
    grid = parse_grid(["loss.name=dpo,ipo", "train.seed=0,1,2", "hparam.beta=0.1, 0.5", "flag=true"])
    assert list(grid) == ["loss.name", "train.seed", "hparam.beta", "flag"]
    assert grid["loss.name"] == [("dpo", "dpo"), ("ipo", "ipo")]
    assert grid["train.seed"] == [("0", 0), ("1", 1), ("2", 2)]
    assert grid["hparam.beta"] == [("0.1", 0.1), ("0.5", 0.5)]
    assert grid["flag"] == [("true", True)]


@pytest.mark.parametrize("item, message", [
    ("seed", "KEY=V1,V2"), ("=1,2", "KEY=V1,V2"), ("loss..name=dpo", "is not a key"), ("seed=0,,1", "empty value"),
    ("seed=0,0", "repeated"), ("seed=[1", "cannot read"),
])
def test_parse_grid_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid([item])


def test_parse_grid_key_twice():
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["seed=0", "seed=1"])


def test_expand_and_names():
    points = expand(parse_grid(["loss=dpo,ipo", "seed=0,1"]))
    assert [run_name(p) for p in points] == ["loss-dpo_seed-0", "loss-dpo_seed-1", "loss-ipo_seed-0", "loss-ipo_seed-1"]
    assert run_name({"data.train": ("a/b c.jsonl", "a/b c.jsonl")}) == "data.train-a-b-c.jsonl"


class FakeBase:
    """Records calls; metric = value of `x` plus the seed / 10; fails where `fail` says so."""
    name = "fake"
    seed_key = "seed"

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def check(self, point, run_dir):
        if point.get("x", ("", 0))[1] == "bad":
            raise ConfigError("x=bad is not allowed")

    def run(self, point, run_dir, log):
        name = run_name(point)
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError("boom")
        log("trained")
        x, seed = point["x"][1], point["seed"][1]
        return {"reward": x + seed / 10, "kl": 1.0}


def test_sweep_rows_summary_and_resume(tmp_path):
    grid = parse_grid(["x=1,2", "seed=0,1,2"])
    out = str(tmp_path / "sweep")
    lines = []
    base = FakeBase(fail={"x-2_seed-1"})
    result = run_sweep(base, grid, out, log=lines.append)
    assert len(base.calls) == 6
    on_disk = json.load(open(os.path.join(out, "sweep.json")))
    assert on_disk == json.loads(json.dumps(result))
    rows = {r["run"]: r for r in on_disk["rows"]}
    assert rows["x-1_seed-2"]["keys"] == {"x": 1, "seed": 2}
    assert rows["x-1_seed-2"]["metrics"] == {"reward": 1.2, "kl": 1.0}
    assert rows["x-2_seed-1"]["status"] == "failed" and rows["x-2_seed-1"]["error"] == "RuntimeError: boom"
    assert os.path.exists(os.path.join(out, "runs", "x-2_seed-1", "error.txt"))
    assert not os.path.exists(os.path.join(out, "runs", "x-2_seed-1", "DONE"))
    assert os.path.exists(os.path.join(out, "runs", "x-1_seed-0", "DONE"))
    groups = {g["group"]: g for g in on_disk["summary"]}
    assert set(groups) == {"x=1", "x=2"}
    one = groups["x=1"]["metrics"]["reward"]
    assert one["n"] == 3 and one["mean"] == pytest.approx(1.1)
    assert one["half_width"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5)
    assert groups["x=2"]["metrics"]["reward"]["n"] == 2  # the failed seed is left out
    assert groups["x=2"]["seeds"] == [0, 2]
    assert any("FAILED" in line and "boom" in line for line in lines)
    assert any(line.startswith("[sweep 6/6]") for line in lines)

    # run again: finished runs are skipped, the failed one is retried
    again = FakeBase()
    result = run_sweep(again, grid, out, log=lines.append)
    assert again.calls == ["x-2_seed-1"]
    assert all(r["status"] == "done" for r in result["rows"])
    assert [r["run"] for r in result["rows"]] == [run_name(p) for p in expand(grid)]
    assert {g["group"]: g["metrics"]["reward"]["n"] for g in result["summary"]} == {"x=1": 3, "x=2": 3}


def test_sweep_checks_every_point_first(tmp_path):
    base = FakeBase()
    with pytest.raises(ConfigError, match="x=bad"):
        run_sweep(base, parse_grid(["x=1,bad"]), str(tmp_path), log=lambda s: None)
    assert base.calls == []


def test_demo_settings_from_keys(tmp_path):
    base = DemoBase(fixed={k: v[0] for k, v in parse_grid(["task=graded"]).items()}, quick=True)
    point = expand(parse_grid(["loss=rdpo", "seed=2", "label_noise=0.3", "hparam.eps=0.3",
                               "hparam.modifiers.ld_alpha=0.5", "reference_beta=1", "pair_prompts=100"]))[0]
    s = base.settings(point, str(tmp_path / "r"))
    assert (s.loss, s.seed, s.label_noise, s.task, s.reference_beta) == ("rdpo", 2, 0.3, "graded", 1.0)
    assert s.loss_hparams == {"eps": 0.3, "modifiers": {"ld_alpha": 0.5}}
    assert s.pair_prompts == 100
    assert (s.n_train_prompts, s.warmup_steps, s.dpo_epochs) == (200, 120, 2)
    assert s.output_dir == str(tmp_path / "r")
    # ranked lists of each prompt's samples: a listwise loss reads them whole, a pairwise one through pair_builder
    point = expand(parse_grid(["loss=plackett_luce", "train_data=lists", "pair_builder=all_pairs"]))[0]
    s = base.settings(point, str(tmp_path / "l"))
    assert (s.loss, s.train_data, s.pair_builder) == ("plackett_luce", "lists", "all_pairs")
    assert s.data_kind("lists") == "lists" and DemoSettings().data_kind("lists") == "lists"
    assert DemoSettings().data_kind("pairs") == "pairs" and s.data_kind("pairs") == "lists"


@pytest.mark.parametrize("item, message", [
    ("lr=1", "not a demo setting"), ("seed=0.5", "expected int"), ("task=nope", "unknown demo task"),
    ("loss=nope", "unknown loss"), ("loss=kto", "unpaired"), ("train_data=nope", "train_data"), ("hparam.nope=1", "no hyperparameter"),
    ("hparam.beta=-1", "beta"),
])
def test_demo_settings_errors(item, message, tmp_path):
    point = expand(parse_grid([item]))[0]
    with pytest.raises(ConfigError, match=message):
        DemoBase({}).settings(point, str(tmp_path))


def test_report_of_a_sweep(tmp_path):
    out = str(tmp_path / "sweep")
    run_sweep(FakeBase(), parse_grid(["x=1,2", "seed=0,1"]), out, log=lambda s: None)
    for name in ("x-1_seed-0", "x-2_seed-1"):  # training curves for two runs
        with open(os.path.join(out, "runs", name, "metrics.jsonl"), "w") as handle:
            for step in (1, 2, 3):
                handle.write(json.dumps({"step": step, "loss": 0.7 / step, "rewards/accuracies": 0.5 + step / 10}) + "\n")
    from dpokit.cli import main

    assert main(["report", out]) == 0
    page = open(os.path.join(out, "report", "index.html")).read()
    for name in ("sweep_metrics", "sweep_frontier", "sweep_curves"):
        assert f'id="{name}"' in page
        assert os.path.getsize(os.path.join(out, "report", f"{name}.png")) > 1000
    assert "x=1" in page and "1.050 ± " in page


def test_cli_errors_are_one_line(tmp_path, capsys):
    from dpokit.cli import main

    assert main(["sweep", "demo", "--grid", "loss=nope", "--output", str(tmp_path)]) == 2
    assert "sweep run loss-nope" in capsys.readouterr().err
    assert main(["sweep", "demo", "--grid", "seed=0", "--set", "seed=1", "--output", str(tmp_path)]) == 2
    assert "both in --grid and in --set" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--grid", "train.seed=0", "--output", str(tmp_path)]) == 2
    assert "not a config file" in capsys.readouterr().err
    assert main(["sweep", "demo", "--output", str(tmp_path)]) == 2
    assert "at least one --grid" in capsys.readouterr().err


@pytest.mark.slow
def test_config_base_end_to_end(tiny_model_dir, pairs_file, tmp_path, capsys):
    """A real config swept over loss.name x train.seed: rows with the trainer's metrics, resume skips all."""
    import yaml

    from dpokit.cli import main
    from conftest import train_config

    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(train_config(tiny_model_dir, str(pairs_file), tmp_path / "unused",
                                                  train={"log_every": 1})))
    out = tmp_path / "sweep"
    argv = ["sweep", str(config), "--grid", "loss.name=dpo,ipo", "--grid", "train.seed=0,1", "--output", str(out)]
    assert main(argv) == 0
    sweep = json.load(open(out / "sweep.json"))
    assert [r["run"] for r in sweep["rows"]] == ["loss.name-dpo_train.seed-0", "loss.name-dpo_train.seed-1",
                                                 "loss.name-ipo_train.seed-0", "loss.name-ipo_train.seed-1"]
    assert all(r["status"] == "done" and "loss" in r["metrics"] for r in sweep["rows"])
    assert sweep["seed_key"] == "train.seed"
    assert [g["group"] for g in sweep["summary"]] == ["loss.name=dpo", "loss.name=ipo"]
    assert sweep["summary"][0]["metrics"]["loss"]["n"] == 2
    saved = yaml.safe_load(open(out / "runs" / "loss.name-ipo_train.seed-1" / "config.yaml"))
    assert saved["loss"]["name"] == "ipo" and saved["train"]["seed"] == 1
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
