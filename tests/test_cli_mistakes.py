"""Every mistake a config or a path can carry ends `dpokit train` with a one-line error naming the key
or the file (exit code 2), never a traceback."""

import json
import os

import pytest
import yaml

from conftest import train_config


def write(path, text, mode="w"):
    with open(path, mode) as handle:
        handle.write(text)
    return str(path)


def config_file(tmp_path, raw):
    existing = len(list(tmp_path.glob("config-*.yaml")))
    return write(tmp_path / f"config-{existing}.yaml", yaml.safe_dump(raw))


def mistakes(tmp_path, model_dir, pairs):
    """(label, argv, text the error must contain)"""
    base = lambda **sections: train_config(model_dir, pairs, tmp_path / "run", **sections)  # noqa: E731
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    bad_lines = write(tmp_path / "bad.jsonl", '{"prompt": "a", "chosen": " b", "rejected": " c"}\n{not json\n'
                                              '{"prompt": "a", "chosen": " b", "rejected": " c"}\n')
    no_field = write(tmp_path / "nofield.jsonl", json.dumps({"prompt": "a", "chosen": " b"}) + "\n")
    return [
        ("model dir missing", [config_file(tmp_path, base(model={"name_or_path": str(tmp_path / "nope")}))],
         "model.name_or_path: no such directory"),
        ("model dir without config.json", [config_file(tmp_path, base(model={"name_or_path": str(empty_dir)}))],
         "has no config.json"),
        ("model path is a file", [config_file(tmp_path, base(model={"name_or_path": pairs}))], "is a file"),
        ("reference path missing", [config_file(tmp_path, base(reference={"kind": "path",
                                                                          "path": str(tmp_path / "ref")}))],
         "reference.path: no such directory"),
        ("config not utf-8", [write(tmp_path / "latin1.yaml", b"model:\n  name_or_path: x\n# caf\xe9\n", "wb")],
         "not UTF-8"),
        ("config missing", [str(tmp_path / "missing.yaml")], "config file not found"),
        ("config is a directory", [str(tmp_path)], "is a directory"),
        ("yaml syntax", [write(tmp_path / "syntax.yaml", "model: [unclosed\n")], "invalid YAML"),
        ("top level list", [write(tmp_path / "list.yaml", "- a\n- b\n")], "top level must be a mapping"),
        ("unknown key", [config_file(tmp_path, base(train={"lrr": 1}))], "unknown key 'train.lrr'"),
        ("wrong type", [config_file(tmp_path, base(train={"batch_size": "eight"}))], "train.batch_size"),
        ("unknown loss", [config_file(tmp_path, base(loss={"name": "dpoo"}))], "unknown loss 'dpoo'"),
        ("bad hyperparameter", [config_file(tmp_path, base(loss={"name": "rdpo", "eps": 0.7}))], "eps"),
        ("data file missing", [config_file(tmp_path, base(data={"train": str(tmp_path / "none.jsonl")}))],
         "none.jsonl"),
        ("data line not json", [config_file(tmp_path, base(data={"train": bad_lines}))], "bad.jsonl:2"),
        ("data field missing", [config_file(tmp_path, base(data={"train": no_field}))], "rejected"),
        ("override not key=value", [config_file(tmp_path, base()), "--set", "train.lr"], "--set expects key=value"),
        ("override unknown key", [config_file(tmp_path, base()), "--set", "train.nope=1"], "train.nope"),
    ]


def test_config_and_path_mistakes_end_in_one_line_errors(tmp_path, tiny_model_dir, pairs_file, capsys):
    from dpokit.cli import main

    cases = mistakes(tmp_path, tiny_model_dir, pairs_file)
    assert len(cases) >= 18
    for label, argv, expected in cases:
        code = main(["train", *argv])
        err = capsys.readouterr().err
        assert code == 2, (label, code, err)
        assert "Traceback" not in err, (label, err)
        assert expected in err, (label, err)
        lines = [line for line in err.splitlines() if line.startswith("dpokit: error:")]
        assert len(lines) == 1, (label, err)
    assert not os.path.exists(tmp_path / "run" / "final")  # nothing was trained


@pytest.mark.parametrize("value", ["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B"])
def test_hub_ids_are_not_taken_for_missing_directories(tmp_path, pairs_file, value):
    from dpokit.config import from_dict
    from dpokit.preflight import check_run

    check_run(from_dict(train_config(value, pairs_file, tmp_path / "run")))  # no error before loading
