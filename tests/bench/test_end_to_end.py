"""``dpokit bench`` end to end on a tiny model: every configuration runs and dpokit's loss is TRL's."""

import importlib.util
import json

import pytest

from dpokit.cli import main

pytestmark = pytest.mark.slow  # full benchmark runs against TRL, in worker processes

TINY = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--vocab-size", "300", "--batch-size", "2",
        "--max-length", "64", "--steps", "1", "--warmup", "1", "--device", "cpu", "--threads", "1"]


def run_bench(argv, capsys):
    assert main(["bench"] + argv) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_bench_json_against_trl(capsys):
    if importlib.util.find_spec("trl") is None:
        pytest.fail("TRL is part of the test extra: pip install -e '.[test]'")
    report = json.loads(run_bench(TINY + ["--layouts", "padded,prompt_shared", "--reference", "both",
                                          "--compare", "trl", "--json"], capsys))
    assert report["setup"]["data"] == "generated (1600 HH-style pairs, seed 0)"
    assert set(report["layouts"]) == {"padded", "prompt_shared", "padded+cached_ref", "prompt_shared+cached_ref"}
    assert set(report["ratios"]) == set(report["layouts"])
    assert report["reference_cache"]["examples"] == 4
    for label, result in [*report["layouts"].items(), ("trl", report["trl"])]:
        assert len(result["step_seconds"]) == 2 and len(result["losses"]) == 2, label
        assert result["pairs_per_s"] > 0 and result["peak_memory_mb"] > 0, label
        # Same weights, same token ids, same hyperparameters: the same loss before and after one update.
        assert result["losses"] == pytest.approx(report["trl"]["losses"], abs=1e-4), label


@pytest.mark.slow
def test_bench_table_from_a_data_file(tmp_path, capsys):
    from conftest import make_pairs, write_jsonl

    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
    out = run_bench(TINY + ["--layouts", "packed", "--data", path], capsys)
    lines = out.splitlines()
    assert lines[0].startswith("dpokit bench on cpu (")
    assert lines[1].startswith(f"data: {path}; batch 2 pairs, max length 64, 1 measured steps after 1 warm-up")
    assert any(line.startswith("packed ") for line in lines)
    assert not any(line.startswith("TRL") for line in lines)


@pytest.mark.slow
def test_bench_qwen2_gqa_padded_vocabulary_long_rows_against_trl(capsys):
    argv = ["--hidden-size", "32", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--arch", "qwen2",
            "--vocab-size", "300", "--model-vocab", "5000", "--batch-size", "1", "--sequence-length", "128",
            "--steps", "1", "--warmup", "1", "--device", "cpu", "--threads", "1", "--layouts", "padded,prompt_shared",
            "--compare", "trl", "--json"]
    report = json.loads(run_bench(argv, capsys))
    setup = report["setup"]
    assert (setup["arch"], setup["kv_heads"], setup["model_vocab"], setup["vocab_size"]) == ("qwen2", 2, 5000, 300)
    assert (setup["sequence_length"], setup["completion_length"], setup["max_length"]) == (128, 16, 512)
    for label, result in [*report["layouts"].items(), ("trl", report["trl"])]:
        assert result["losses"] == pytest.approx(report["trl"]["losses"], abs=1e-4), label
