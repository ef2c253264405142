"""`dpokit demo --modality diffusion` end to end (quick settings)."""

import json
import math
import os

import pytest
import torch


@pytest.mark.slow
def test_diffusion_demo_quick(tmp_path):
    from diffusers import UNet2DModel

    from dpokit.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--modality", "diffusion", "--quick", "--output-dir", out, "--loss", "ipo",
                 "--hparam", "beta=0.5"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["loss"] == "ipo" and summary["steps"] > 0 and summary["train_pairs"] > 0
    for key in ("fraction_in_preferred_mode", "reward", "class_accuracy", "preference_accuracy"):
        assert 0.0 <= summary["before"][key] <= 1.0 or key == "reward"
        assert key in summary["after"]
    assert summary["before"]["preference_accuracy"] == 0.5  # policy == reference: every pair a tie
    final = UNet2DModel.from_pretrained(os.path.join(out, "train", "final"))
    pretrained = UNet2DModel.from_pretrained(os.path.join(out, "pretrained"))
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), pretrained.state_dict().values()))
    grids = json.load(open(os.path.join(out, "train", "samples", "diffusion", "index.json")))
    assert grids["kind"] == "image" and len(grids["rows"]) == 4
    assert all(os.path.isfile(os.path.join(out, "train", "samples", "diffusion", row[k]))
               for row in grids["rows"] for k in ("policy", "reference"))


def _tiny_settings(tmp_path, loss, prefer="A"):
    from dpokit.tasks.diffusion_demo import DiffusionDemoSettings

    return DiffusionDemoSettings(output_dir=str(tmp_path / loss), loss=loss, prefer=prefer, pretrain_steps=2,
                                 samples_per_class=8, dpo_epochs=1, eval_per_class=4, sample_steps=2)


@pytest.mark.parametrize("prefer", ["A", "B"])
def test_demo_lists_are_ranked_groups_with_their_rewards(tmp_path, prefer):
    from dpokit.data.images import load_image_examples
    from dpokit.tasks.bimodal import BimodalTask, noise_scheduler, tiny_unet
    from dpokit.tasks.diffusion_demo_data import build_record_files, preference_score, scored_groups

    task, scheduler = BimodalTask(), noise_scheduler()
    model = tiny_unet(task.num_classes, task.size, 0)
    settings = _tiny_settings(tmp_path, "diffusion_rankdpo", prefer)
    groups = list(scored_groups(model, scheduler, task, settings, 5))
    assert groups and all(len(scores) == settings.group for _, _, scores in groups)
    n = build_record_files(model, scheduler, task, settings, str(tmp_path / "lists"), 5, "lists")
    lists, _ = load_image_examples(str(tmp_path / "lists" / "lists.jsonl"), kind="lists", size=task.size)
    assert n == len(lists) == len(groups)
    for (c, images, scores), ex in zip(groups, lists):
        assert ex.caption == f"class {c}" and ex.images.shape[0] == settings.group
        assert ex.scores == sorted(ex.scores, reverse=True)  # the winner first
        assert sorted(ex.scores) == pytest.approx(sorted(scores.tolist()))
        # the written scores are the preference rewards of the images (up to the PNG's 8-bit rounding)
        assert ex.scores == pytest.approx(preference_score(task, ex.images, prefer).tolist(), abs=0.02)
    build_record_files(model, scheduler, task, settings, str(tmp_path / "pairs"), 5, "pairs")
    pairs, _ = load_image_examples(str(tmp_path / "pairs" / "pairs.jsonl"), size=task.size)
    assert len(pairs) == len(groups)
    for (_, _, scores), ex in zip(groups, pairs):
        assert ex.extras["chosen_score"] == pytest.approx(float(scores.max()))
        assert ex.extras["rejected_score"] == pytest.approx(float(scores.min()))


@pytest.mark.parametrize("loss,data,x_t", [("diffusion_rankdpo", "lists", "forward"), ("phygdpo", "lists", "forward"),
                                           ("smpo", "pairs", "forward"), ("inpo", "pairs", "ddim_inversion")])
def test_demo_takes_listwise_scored_and_inverted_losses(tmp_path, loss, data, x_t):
    from dpokit.tasks.diffusion_demo import run_diffusion_demo

    summary = run_diffusion_demo(_tiny_settings(tmp_path, loss), log=lambda *a: None)
    assert summary["loss"] == loss and summary["train_data"] == data and summary["x_t"] == x_t
    assert summary["steps"] > 0 and summary["train_pairs"] > 0
    rows = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "train", "metrics.jsonl"))]
    assert rows and all(math.isfinite(row["loss"]) for row in rows)
    if loss == "smpo":  # the loss read each image's reward: chosen scored above rejected, p > 1/2
        assert all(row["smpo/preference"] > 0.5 for row in rows)


def test_demo_refuses_a_loss_on_other_data(tmp_path):
    from dpokit.tasks.diffusion_demo import run_diffusion_demo

    with pytest.raises(ValueError, match="pairs or ranked lists"):
        run_diffusion_demo(_tiny_settings(tmp_path, "kto"), log=lambda *a: None)
