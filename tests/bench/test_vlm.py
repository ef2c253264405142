"""``dpokit bench --modality vlm``: the workers on a tiny Llava (in-process, one step each) give the same
token ids and the same first-step DPO loss as TRL's DPOTrainer; the CLI end to end (slow)."""

import json
import os

import pytest

from dpokit.bench import vlm

TINY = dict(hidden_size=32, layers=1, heads=2, vision_hidden=32, vision_layers=1, image_size=16, patch_size=4,
            batch_size=2, steps=1, warmup=0, seed=0)


class Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("vlm-bench"))
    return vlm.prepare(Args(**TINY), workdir)


def spec(prepared, **kw):
    return {"device": "cpu", "dtype": "float32", "attn": "sdpa", "batches": prepared["batches"],
            "data_dir": prepared["data_dir"], "dirs": prepared["dirs"], "beta": 0.1, "lr": 1e-3, "chunk_size": 1024,
            "max_length": 512, "threads": None, "clock": "cpu", **kw}


def test_records_are_fixed_by_the_seed_and_differ_within_a_pair(tmp_path):
    a = vlm.records(8, 3, str(tmp_path / "a"), 16)
    b = vlm.records(8, 3, str(tmp_path / "b"), 16)
    assert a == b
    assert all(r["chosen"] != r["rejected"] for r in a)
    assert all(os.path.exists(tmp_path / "a" / r["images"][0]) for r in a)


def test_prepare_sizes_and_batches(prepared):
    assert len(prepared["batches"]) == 1 and len(prepared["batches"][0]) == 2
    assert prepared["image_tokens"] == 16
    assert 0 < prepared["vision_parameters"] < prepared["parameters"]


def test_dpokit_layouts_and_trl_agree_on_ids_and_first_loss(prepared):
    padded = vlm.dpokit_worker(spec(prepared, kind="dpokit", layout="padded"))
    shared = vlm.dpokit_worker(spec(prepared, kind="dpokit", layout="prompt_shared"))
    trl = vlm.trl_worker(spec(prepared, kind="trl"))
    assert padded["token_ids"] == shared["token_ids"] == trl["token_ids"]
    assert padded["images_per_step"] == 2 and trl["images_per_step"] == 4  # TRL: each image twice
    assert abs(trl["losses"][0] - 0.6931) > 1e-4  # policy and reference differ
    assert padded["losses"][0] == pytest.approx(trl["losses"][0], abs=1e-5)
    assert shared["losses"][0] == pytest.approx(trl["losses"][0], abs=1e-5)
    for result in (padded, shared, trl):
        assert len(result["times"]) == 1 and result["peak_bytes"] > 0
    summary = vlm.summarise(padded, 0)
    assert summary["pairs_per_s"] > 0 and summary["tokens_per_s"] > summary["pairs_per_s"]


def test_reference_cache_is_refused():
    from dpokit.bench import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--modality", "vlm", "--reference", "cached"])
    with pytest.raises(SystemExit, match="--reference model only"):
        vlm.run(args, "/nonexistent")


@pytest.mark.slow
def test_cli_against_trl(capsys):
    from dpokit.cli import main

    argv = ["bench", "--modality", "vlm", "--hidden-size", "32", "--layers", "1", "--heads", "2", "--vision-hidden",
            "32", "--vision-layers", "1", "--image-size", "16", "--batch-size", "2", "--steps", "1", "--warmup", "1",
            "--device", "cpu", "--threads", "1", "--clock", "cpu", "--compare", "trl", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["layouts"]) == {"padded", "prompt_shared"}
    assert report["same_token_ids_as_trl"] == {"padded": True, "prompt_shared": True}
    for label, loss in report["first_step_loss"].items():
        assert loss == pytest.approx(report["first_step_loss"]["trl"], abs=1e-5), label
    assert set(report["ratios"]) == {"padded", "prompt_shared"}
