"""``dpokit bench --modality diffusion``: the official-step, dpokit and precomputed-reference workers
(in-process, two steps each on a tiny UNet) give the same losses, the official worker's loss is the
Salesforce formula, and the report's ratios are to the official step; the CLI end to end (slow)."""

import argparse
import json

import pytest

from dpokit.bench import add_arguments, diffusion


def args(*extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--modality", "diffusion", "--diffusion-size", "8", "--unet-channels", "8,16",
                              "--batch-size", "2", "--steps", "1", "--warmup", "1", "--lr", "1e-3", *extra])


def base_spec(tmp_path, lora):
    a = args("--diffusion-lora", str(lora))
    prepared = diffusion.prepare(a, str(tmp_path))
    return dict(prepared, device="cpu", batch_size=a.batch_size, beta_dpo=a.beta_dpo, lr=a.lr, seed=a.seed,
                lora=a.diffusion_lora, threads=None, clock="cpu")


@pytest.mark.parametrize("lora", [0, 2])
def test_workers_agree_step_by_step(tmp_path, lora):
    spec = base_spec(tmp_path, lora)
    cache = diffusion.cache_worker(dict(spec, kind="cache", cache_dir=str(tmp_path / "cache")))
    assert cache["examples"] == 4
    official = diffusion.official_worker(spec)
    live = diffusion.dpokit_worker(spec)
    cached = diffusion.dpokit_worker(dict(spec, cache=cache["path"]))
    assert len(official["losses"]) == len(official["times"]) == 2
    assert abs(official["losses"][0] - 0.6931471805599453) > 1e-6  # policy and reference differ at step 0
    for other in (live, cached):  # same surrogate, same noise, same optimizer: the same trajectory
        assert other["losses"] == pytest.approx(official["losses"], rel=1e-5, abs=1e-7)
        assert other["peak_bytes"] > 0


def test_report_ratios_and_table():
    result = {"times": [1.0, 0.5, 0.5], "losses": [0.7, 0.6, 0.5], "peak_bytes": 2 ** 21, "memory_method": "x"}
    official = diffusion.summarise(result, 1, 4)
    assert official["pairs_per_s"] == pytest.approx(8.0) and official["peak_memory_mb"] == 2.0
    faster = diffusion.summarise(dict(result, times=[1.0, 0.25, 0.25], peak_bytes=2 ** 20), 1, 4)
    report = {"machine": {"device": "cpu", "gpu": None, "processor": "p", "cpu_count": 2, "torch_threads": 1,
                          "torch": "t"},
              "setup": {"model": "UNet2DConditionModel", "block_out_channels": [8, 16], "parameters": 1e5,
                        "image_size": 8, "lora_rank": 0, "official": "o", "batch_size": 4, "steps": 2, "warmup": 1,
                        "clock": "cpu", "repeats": 1},
              "configurations": {"official": official, "dpokit+cached_ref": faster},
              "ratios": {"official": {"pairs_per_s": 1.0, "peak_memory": 1.0},
                         "dpokit+cached_ref": {"pairs_per_s": 2.0, "peak_memory": 0.5}}}
    table = diffusion.format_report(report)
    assert "dpokit+cached_ref" in table and "2.00x" in table and "0.50x" in table


@pytest.mark.slow
def test_cli_end_to_end(capsys):
    from dpokit.cli import main

    argv = ["bench", "--modality", "diffusion", "--diffusion-size", "8", "--unet-channels", "8,16", "--batch-size",
            "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["configurations"]) == set(diffusion.CONFIGS)
    assert report["ratios"]["official"]["pairs_per_s"] == 1.0
    for label, ratio in report["ratios"].items():
        assert ratio["first_step_loss_difference"] == pytest.approx(0.0, abs=1e-6), label


@pytest.mark.parametrize("flag", [["--compare", "trl"], ["--dtype", "bfloat16"], ["--attn", "sdpa"],
                                  ["--projection", "liger"]])
def test_text_options_are_refused_not_ignored(tmp_path, flag):
    with pytest.raises(SystemExit, match=f"{flag[0]} {flag[1]}: not available with --modality diffusion"):
        diffusion.run(args(*flag), str(tmp_path))
