"""A tiny trained run (with training-time monitoring) shared by the CLI and report tests."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import make_pairs, train_config, write_jsonl

JUDGE = "def judge(prompt, response):\n    return float(len(response.split()) % 3)\n"


@pytest.fixture(scope="session")
def judge_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "judge.py"
    path.write_text(JUDGE)
    return str(path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir, judge_file):
    """``dpokit train`` for 4 steps with ``train.monitor`` (a judge, sampled answers) and an eval set."""
    from dpokit.cli import main

    root = tmp_path_factory.mktemp("trained")
    train = write_jsonl(root / "pairs.jsonl", make_pairs(24))
    heldout = write_jsonl(root / "heldout.jsonl", make_pairs(12, seed=7))
    raw = train_config(tiny_model_dir, train, root / "run", data={"eval": heldout},
                       train={"max_steps": 4, "eval_every": 2,
                              "monitor": {"judge": f"{judge_file}:judge", "max_new_tokens": 6, "examples": 12}})
    (root / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(root / "c.yaml")]) == 0
    return {"run": str(root / "run"), "heldout": heldout, "root": root}


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="session")
def evaluated_run(trained_run, judge_file):
    """``dpokit eval --model RUN --generate 2 --judge ... --output RUN`` (the reference comes from the run)."""
    from dpokit.cli import main

    run = trained_run["run"]
    code = main(["eval", "--model", run, "--data", trained_run["heldout"], "--generate", "2", "--max-new-tokens", "6",
                 "--judge", f"{judge_file}:judge", "--loss", "dpo", "--output", run, "--layer-positions", "128"])
    assert code == 0
    return trained_run


@pytest.fixture(scope="session")
def report_dir(evaluated_run, tmp_path_factory):
    """``dpokit report RUN --output DIR`` on the evaluated run; returns DIR."""
    from dpokit.cli import main

    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", evaluated_run["run"], "--output", str(out)]) == 0
    return out
