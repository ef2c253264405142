"""The precomputed reference of denoisers: errors per (example, draw) computed once equal the live
reference's, at every draw a run visits, and `dpokit train` with `reference.precompute` trains the
same weights as with the live reference."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.data.images import ImageExample
from dpokit.losses import Needs
from dpokit.reference import ModelReference
from dpokit.scoring.diffusion import DiffusionScorer
from dpokit.scoring.diffusion.cached import PrecomputedDenoisingReference, precompute, run_draws
from dpokit.data.images import collate_images

from .test_scorer import TinyDenoiser, scheduler


def encode(captions):
    return {"class_labels": torch.tensor([int(c) for c in captions])}


def examples(n, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ImageExample(str(i % 3), torch.rand((m, 3, 4, 4), generator=g) * 2 - 1, index=i) for i in range(n)]


@pytest.mark.parametrize("kind,timestep_range", [("epsilon", None), ("v_prediction", (100, 900))])
def test_precomputed_errors_equal_the_live_reference(tmp_path, kind, timestep_range):
    sched = scheduler(kind)
    scorer = DiffusionScorer(Needs(reference=True, data="pairs"), sched, seed=3, timestep_range=timestep_range)
    policy, reference = TinyDenoiser(0), ModelReference(TinyDenoiser(1))
    data = examples(5)
    cached = precompute(scorer, reference, data, [0, 1, 2], encode, batch_size=2, cache_dir=str(tmp_path))
    assert not cached.hit and len(cached.store) == 15
    for draw in (0, 2):
        batch = collate_images([data[4], data[1], data[2]], [draw] * 3, encode)  # another batching than the cache's
        live_pi, live_ref = scorer.errors(policy, batch, reference)
        cached_pi, cached_ref = scorer.errors(policy, batch, cached)
        torch.testing.assert_close(cached_ref, live_ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(cached_pi, live_pi)
    again = precompute(scorer, reference, data, [0, 1, 2], encode, batch_size=2, cache_dir=str(tmp_path))
    assert again.hit and again.store.keys() == cached.store.keys()
    other = DiffusionScorer(Needs(reference=True, data="pairs"), sched, seed=4, timestep_range=timestep_range)
    assert not precompute(other, reference, data, [0, 1, 2], encode, 2, str(tmp_path)).hit  # the seed is in the key
    with pytest.raises(KeyError, match="draw 3"):
        cached.errors(collate_images(data[:1], [3], encode))


def test_run_draws():
    config = from_dict({"model": {"name_or_path": "x"}, "data": {"train": "x"}, "train": {"epochs": 3}})
    assert run_draws(config, 10) == [0, 1, 2]
    config = from_dict({"model": {"name_or_path": "x"}, "data": {"train": "x"},
                        "train": {"max_steps": 7, "batch_size": 2}})
    assert run_draws(config, 6)[-1] >= 2  # 3 steps per epoch: epochs 0, 1, 2 are visited
    # 4 processes share 24 examples: 6 each, 3 steps an epoch, so 7 steps reach epoch 2 (one process: epoch 0)
    assert run_draws(config, 24, world_size=4)[-1] >= 2
    assert run_draws(config, 24)[-1] >= 0


def test_the_key_changes_with_the_scheduler_config_and_the_condition_encoder():
    from dpokit.scoring.diffusion.cached import cache_key

    reference, data = TinyDenoiser(1), examples(4)
    scorer = DiffusionScorer(Needs(reference=True, data="pairs"), scheduler("epsilon"), seed=0)
    base = cache_key(scorer, reference, data, [0], encode)
    assert cache_key(scorer, reference, data, [0], encode) == base
    other_betas = scheduler("epsilon")
    other_betas.register_to_config(beta_end=0.03)
    other = DiffusionScorer(Needs(reference=True, data="pairs"), other_betas, seed=0)
    assert cache_key(other, reference, data, [0], encode) != base

    def shifted(captions):  # another class order: other conditions for the same captions
        return {"class_labels": (encode(captions)["class_labels"] + 1) % 3}

    assert cache_key(scorer, reference, data, [0], shifted) != base


def test_train_with_precomputed_reference_matches_the_live_reference(tmp_path):
    from diffusers import UNet2DConditionModel

    from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_pairs(str(tmp_path / "data"), 6)
    finals, losses = [], []
    for name, reference in (("live", {}), ("cached", {"precompute": True, "cache_dir": str(tmp_path / "cache")})):
        raw = {"model": {"name_or_path": model_dir, "kind": "diffusion", "dtype": "float32"},
               "data": {"train": data, "eval_fraction": 0.25}, "loss": {"name": "dpo", "beta": 250.0},
               "reference": reference,
               "train": {"output_dir": str(tmp_path / name), "lr": 1e-3, "batch_size": 2, "epochs": 2,
                         "report_to": [], "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0,
                         "scheduler": "constant"}}
        trainer = Trainer(from_dict(raw))
        if name == "cached":
            assert isinstance(trainer.reference, PrecomputedDenoisingReference)
            assert {d for _, d in trainer.reference.store} == {0, 1}
        assert trainer.fit()["status"] == "completed"
        rows = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        losses.append([r["loss"] for r in rows if "loss" in r] + [r["eval/loss"] for r in rows if "eval/loss" in r])
        finals.append(UNet2DConditionModel.from_pretrained(str(tmp_path / name / "final" / "unet"),
                                                           use_safetensors=True).state_dict())
    assert len(losses[0]) >= 4
    # equal up to float rounding (the cache batches examples in another order), which beta 250 amplifies
    assert losses[0] == pytest.approx(losses[1], rel=2e-4, abs=1e-6)
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-4, atol=1e-5, msg=key)
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_lora_run_precomputes_the_adapters_off_reference(tmp_path):
    from diffusers import UNet2DConditionModel

    from dpokit.data.images import collate_images
    from dpokit.tasks.tiny_pipeline import save_image_pairs, save_tiny_pipeline
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_pairs(str(tmp_path / "data"), 4)
    raw = {"model": {"name_or_path": model_dir, "kind": "diffusion", "dtype": "float32"}, "data": {"train": data},
           "loss": {"name": "dpo", "beta": 50.0}, "lora": {"enabled": True, "r": 4, "alpha": 4, "dropout": 0.0},
           "reference": {"precompute": True, "cache_dir": str(tmp_path / "cache")},
           "train": {"output_dir": str(tmp_path / "run"), "lr": 1e-3, "batch_size": 2, "epochs": 1, "report_to": [],
                     "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant"}}
    trainer = Trainer(from_dict(raw))
    assert isinstance(trainer.reference, PrecomputedDenoisingReference)
    base = ModelReference(UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), use_safetensors=True))
    batch = collate_images(trainer.train_examples, [0] * 4, trainer.tokenizer.conditioner)
    torch.testing.assert_close(trainer.reference.errors(batch), trainer.scorer.errors(trainer.model, batch, base)[1],
                               rtol=1e-5, atol=1e-7)
    assert trainer.fit()["status"] == "completed"
