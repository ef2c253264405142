"""The table of ``dpokit bench`` and the rates behind it, on fixed results."""

import pytest

from dpokit.bench.report import fastest, format_report, ratios, summarise


def row(pairs_per_s, tokens_per_s, peak_mb, gflops, fraction, strict, losses, method="VmHWM (Linux clear_refs)"):
    return {"pairs_per_s": pairs_per_s, "tokens_per_s": tokens_per_s, "peak_memory_mb": peak_mb,
            "achieved_flops": gflops * 1e9, "flops_fraction": fraction, "flops_fraction_head_where_needed": strict,
            "losses": losses, "memory_method": method}


def fixed_report(with_trl: bool = True):
    report = {
        "machine": {"device": "cpu", "cpu_count": 2, "torch_threads": 1, "processor": "Test CPU", "gpu": None,
                    "torch": "2.0"},
        "setup": {"data": "generated (1600 HH-style pairs, seed 0)", "batch_size": 8, "max_length": 512, "steps": 4,
                  "warmup": 1, "layers": 4, "hidden_size": 256, "vocab_size": 8192, "parameters": 8_390_000,
                  "dtype": "float32", "attn": "sdpa", "clock": "cpu", "repeats": 2},
        "matmul_peak_flops": 94.8e9,
        "layouts": {"padded": row(2.18, 690.4, 1911.2, 23.8, 0.251, 0.207, [0.743954, 0.810821]),
                    "prompt_shared": row(5.9, 1871.6, 762.6, 64.2, 0.677, 0.561, [0.743952, 0.81081])},
    }
    if with_trl:
        report["trl"] = row(1.0, 317.2, 2463.0, 10.9, 0.115, 0.095, [0.743957])
        report["ratios"] = ratios(report["layouts"], report["trl"])
        report["reference_cache"] = {"build_seconds": 1.06, "examples": 40}
    return report


HEAD = [
    "dpokit bench on cpu (Test CPU, 2 cores, 1 torch threads), torch 2.0",
    "data: generated (1600 HH-style pairs, seed 0); batch 8 pairs, max length 512, 4 measured steps after 1 warm-up",
    "model: Llama 4 layers x 256, vocab 8192, 8.39M parameters, float32, attention sdpa",
    "matmul peak: 94.8 GFLOP/s (float32); step time: cpu clock, fastest of 2 run(s)",
    "",
]
FOOT = [
    "peak memory: VmHWM (Linux clear_refs), above the process before the models were loaded",
    "% peak: model FLOP/s (6N per trained token, 2N per reference token, attention included) over the matmul "
    "peak; % peak*: the same with the LM head counted only where DPO needs it",
]


def test_format_report_with_trl():
    assert format_report(fixed_report()).split("\n") == HEAD + [
        "configuration               pairs/s  tokens/s  peak MB  GFLOP/s  % peak  % peak*    loss@1    loss@2"
        "  x TRL speed  x TRL mem",
        "-" * 124,
        "padded                         2.18       690     1911     23.8   25.1%    20.7%   0.74395   0.81082"
        "        2.18x      0.78x",
        "prompt_shared                  5.90      1872      763     64.2   67.7%    56.1%   0.74395   0.81081"
        "        5.90x      0.31x",
        "TRL DPOTrainer                 1.00       317     2463     10.9   11.5%     9.5%   0.74396       nan",
        "",
        "reference cache: built once in 1.1 s for 40 examples (not in the step times)",
    ] + FOOT


def test_format_report_without_trl():
    assert format_report(fixed_report(with_trl=False)).split("\n") == HEAD + [
        "configuration               pairs/s  tokens/s  peak MB  GFLOP/s  % peak  % peak*    loss@1    loss@2",
        "-" * 100,
        "padded                         2.18       690     1911     23.8   25.1%    20.7%   0.74395   0.81082",
        "prompt_shared                  5.90      1872      763     64.2   67.7%    56.1%   0.74395   0.81081",
    ] + FOOT


def test_format_report_names_the_gpu():
    report = fixed_report(with_trl=False)
    report["machine"].update(device="cuda", gpu="Some GPU")
    assert format_report(report).split("\n")[0] == "dpokit bench on cuda (Some GPU), torch 2.0"


def test_ratios():
    out = ratios({"a": row(6.0, 0, 500.0, 0, 0, 0, [0.5])}, row(2.0, 0, 2000.0, 0, 0, 0, [0.25]))
    assert out == {"a": {"pairs_per_s": 3.0, "peak_memory": 0.25, "first_step_loss_difference": 0.25}}


def test_summarise_skips_the_warmup_and_counts_row_tokens():
    # Two steps of one pair each: prompt 3 tokens, completions 2 and 1 -> 3+2 + 3+1 = 9 row tokens.
    batches = [[[0, [1, 2, 3], [[4, 5], [6]]]], [[1, [1, 2, 3], [[4, 5], [6]]]]]
    raw = {"times": [10.0, 0.5], "losses": [0.7, 0.6], "peak_bytes": 3 * 2 ** 20, "memory_method": "m"}
    out = summarise(raw, batches, warmup=1, flops=[100.0, 40.0], peak_flops=160.0, needed_flops=[0.0, 20.0])
    assert out["pairs_per_s"] == pytest.approx(2.0)
    assert out["tokens_per_s"] == pytest.approx(18.0)
    assert out["peak_memory_mb"] == pytest.approx(3.0)
    assert out["achieved_flops"] == pytest.approx(80.0)
    assert out["flops_fraction"] == pytest.approx(0.5)
    assert out["flops_fraction_head_where_needed"] == pytest.approx(0.25)
    assert out["losses"] == [0.7, 0.6] and out["step_seconds"] == [10.0, 0.5]


def test_fastest_keeps_the_best_run_and_lists_all():
    runs = {"a": [{"pairs_per_s": 1.0, "peak_memory_mb": 10.0, "x": 1}, {"pairs_per_s": 2.0, "peak_memory_mb": 11.0, "x": 2}]}
    best = fastest(runs)["a"]
    assert best["x"] == 2
    assert best["pairs_per_s_runs"] == [1.0, 2.0] and best["peak_memory_mb_runs"] == [10.0, 11.0]


def test_format_report_names_the_architecture_and_the_failed_configurations():
    report = fixed_report(with_trl=False)
    report["setup"].update(arch="qwen2", heads=14, kv_heads=2, vocab_size=8192, model_vocab=151936,
                           sequence_length=4096, completion_length=512)
    report["failed"] = {"trl": {"failed": "killed by SIGKILL (on Linux, the out-of-memory killer)",
                                "out_of_memory": True}}
    lines = format_report(report).split("\n")
    assert lines[1].endswith("4 measured steps after 1 warm-up; every row 4096 tokens (512 completion)")
    assert lines[2] == ("model: Qwen2 4 layers x 256, 14 heads (2 KV), vocab 151936 (tokenizer 8192), 8.39M "
                        "parameters, float32, attention sdpa")
    assert "TRL DPOTrainer            failed: killed by SIGKILL (on Linux, the out-of-memory killer)" in lines
