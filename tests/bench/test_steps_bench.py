"""``dpokit bench --modality steps``: both expansion layouts run the same search in one process and the
report's rates and ratios follow from its counts."""

import json

import pytest

from dpokit.bench import main

TINY = ["--modality", "steps", "--problems", "2", "--n-ops", "2", "--warmup-steps", "10", "--hidden-size", "16",
        "--layers", "1", "--heads", "2", "--n-iters", "2", "--threads", "1", "--json"]


def test_steps_bench_reports_both_layouts(capsys):
    assert main(TINY) == 0
    report = json.loads(capsys.readouterr().out)
    shared, naive = report["layouts"]["shared_prefix_kv"], report["layouts"]["naive_reencode"]
    assert shared["layout"] == "shared_prefix_kv" and naive["layout"] == "naive_reencode"
    for row in (shared, naive):
        assert row["expansions"] > 0 and row["generated_tokens"] > 0
        assert row["expansions_per_s"] == pytest.approx(row["expansions"] / row["seconds"], rel=0.02, abs=0.01)
        assert row["step_pairs_per_1k_generated_tokens"] == round(1000 * row["step_pairs"] / row["generated_tokens"], 2)
    # the naive search re-reads the context at every token; the shared one reads each prefix once
    assert naive["processed_per_generated_token"] > shared["processed_per_generated_token"]
    ratios = report["ratios"]
    assert ratios["expansions_per_s"] == round(shared["expansions_per_s"] / naive["expansions_per_s"], 3)
    assert report["setup"]["problems"] == 2 and report["setup"]["clock"] == "wall"
