"""``dpokit bench`` and ``python -m dpokit.bench`` parse the same flags with the same defaults."""

import argparse

import pytest

from dpokit import bench
from dpokit.cli import build_parser

DEFAULTS = dict(data=None, layouts="padded,packed,prompt_shared", reference="model", compare=None, batch_size=8,
                max_length=512, steps=4, warmup=1, repeats=1, hidden_size=256, layers=4, heads=4,
                intermediate_size=None, vocab_size=8192, chunk_size=1024, projection="chunked", dtype="float32", attn="auto",
                gradient_checkpointing=False, compile=False, device="auto", threads=None, clock="wall", beta=0.1,
                lr=1e-3, seed=0, json=False, worker=None, arch="llama", kv_heads=None, model_vocab=None,
                sequence_length=None, completion_length=None, memory_limit_gb=None)

EVERY_FLAG = ["--data", "pairs.jsonl", "--layouts", "packed", "--reference", "both", "--compare", "trl",
              "--batch-size", "2", "--max-length", "64", "--steps", "3", "--warmup", "0", "--repeats", "2",
              "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "48",
              "--vocab-size", "300", "--chunk-size", "16", "--dtype", "bfloat16", "--attn", "eager",
              "--gradient-checkpointing", "--compile", "--device", "cpu", "--threads", "1", "--clock", "cpu",
              "--beta", "0.2", "--lr", "0.01", "--seed", "5", "--json", "--arch", "qwen2", "--kv-heads", "1",
              "--model-vocab", "512", "--sequence-length", "48", "--completion-length", "8",
              "--memory-limit-gb", "2.5"]
EVERY_VALUE = dict(data="pairs.jsonl", layouts="packed", reference="both", compare="trl", batch_size=2, max_length=64,
                   steps=3, warmup=0, repeats=2, hidden_size=32, layers=1, heads=2, intermediate_size=48,
                   vocab_size=300, chunk_size=16, dtype="bfloat16", attn="eager", gradient_checkpointing=True,
                   compile=True, device="cpu", threads=1, clock="cpu", beta=0.2, lr=0.01, seed=5, json=True,
                   worker=None, arch="qwen2", kv_heads=1, model_vocab=512, sequence_length=48, completion_length=8,
                   memory_limit_gb=2.5)


def standalone_parser():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser


def test_cli_defaults():
    args = build_parser().parse_args(["bench"])
    assert {k: getattr(args, k) for k in DEFAULTS} == DEFAULTS
    assert args.func.__name__ == "cmd_bench"


@pytest.mark.parametrize("parse", [lambda a: build_parser().parse_args(["bench"] + a),
                                   lambda a: standalone_parser().parse_args(a)])
def test_every_flag(parse):
    args = parse(EVERY_FLAG)
    assert {k: getattr(args, k) for k in EVERY_VALUE} == EVERY_VALUE


@pytest.mark.parametrize("bad", [["--reference", "live"], ["--compare", "other"], ["--clock", "gpu"],
                                 ["--dtype", "float16"], ["--steps", "two"],
                                 ["--arch", "mamba"]])
def test_bad_values_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as info:
        standalone_parser().parse_args(bad)
    assert info.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_help_names_no_workspace_path(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--data PATH" in out and "generated" in out
    assert "shared/data" not in out and "../" not in out


def test_unknown_layout_is_refused():
    args = standalone_parser().parse_args(["--layouts", "padded,zigzag", "--device", "cpu"])
    with pytest.raises(SystemExit, match="zigzag"):
        bench.run(args)


def test_missing_data_file_is_an_error_not_a_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.jsonl")
    assert bench.main(["--data", missing, "--device", "cpu", "--json"]) == 2
    assert f"--data {missing}: no such file" in capsys.readouterr().err
