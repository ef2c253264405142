"""Ranked image groups (caption, K images, scores) from a file through `dpokit train`: listwise losses,
`diffusion_rankdpo` and `phygdpo` train a tiny UNet; a pairwise loss on list data is refused clearly."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.tasks.tiny_pipeline import save_tiny_pipeline

CAPTIONS = ("a red square", "a blue circle", "a green bar")


def save_image_lists(folder, n, k=4, size=8, seed=0, ragged=False):
    from dpokit.data.images import to_pil

    g = torch.Generator().manual_seed(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    path = os.path.join(folder, "lists.jsonl")
    with open(path, "w") as handle:
        for i in range(n):
            size_k = k - (i % 2) if ragged else k
            names = []
            for j in range(size_k):
                names.append(f"images/{i:03d}_{j}.png")
                to_pil(torch.rand((3, size, size), generator=g) * 2 - 1).save(os.path.join(folder, names[-1]))
            scores = [round(float(s), 3) for s in torch.rand(size_k, generator=g)]
            handle.write(json.dumps({"caption": CAPTIONS[i % 3], "images": names, "scores": scores}) + "\n")
    return path


def config(model_dir, data, out, loss, **sections):
    raw = {"model": {"name_or_path": model_dir, "kind": "diffusion", "dtype": "float32"},
           "data": {"train": data, "kind": "lists", "eval_fraction": 0.25}, "loss": loss,
           "train": {"output_dir": str(out), "lr": 1e-3, "batch_size": 2, "epochs": 1, "report_to": [],
                     "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant"}}
    raw.update(sections)
    return raw


@pytest.mark.parametrize("loss", [{"name": "plackett_luce", "beta": 50.0}, {"name": "lipo_lambda", "beta": 50.0},
                                  {"name": "diffusion_rankdpo", "beta": 50.0},
                                  {"name": "phygdpo", "beta": 50.0, "guidance": "inside"}])
def test_ranked_groups_train_through_dpokit_train(tmp_path, loss):
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_lists(str(tmp_path / "data"), 8, ragged=True)
    lora = {"lora": {"enabled": True, "r": 4, "alpha": 4, "dropout": 0.0}} if loss["name"] == "phygdpo" else {}
    trainer = Trainer(from_dict(config(model_dir, data, tmp_path / "run", loss, **lora)))
    batch = trainer.family.collate(trainer, trainer.train_examples[:2])
    assert batch.images.shape[1] == 4 and batch.list_mask.sum().item() in (7, 8)
    assert trainer.fit()["status"] == "completed"
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    assert any("eval/loss" in r for r in rows)
    assert os.path.isdir(tmp_path / "run" / "final" / "unet")


@pytest.mark.parametrize("builder,per_group", [("best_vs_worst", 1), ("best_vs_each", 3), ("all_pairs", 6)])
def test_a_pairwise_loss_on_ranked_groups_trains_on_built_pairs(tmp_path, builder, per_group):
    from dpokit.data.images import load_image_examples
    from dpokit.train import Trainer

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet")
    data = save_image_lists(str(tmp_path / "data"), 4)
    loss = {"name": "smpo", "beta": 5.0, "score_min": 0.0, "score_max": 1.0}  # reads the built pairs' scores
    raw = config(model_dir, data, tmp_path / "run", loss)
    raw["data"].update(eval_fraction=0.0, pair_builder=builder)
    trainer = Trainer(from_dict(raw))
    groups = load_image_examples(data, "lists")[0]
    assert len(trainer.train_examples) == per_group * len(groups)
    first = trainer.train_examples[0]
    best, worst = max(range(4), key=lambda i: groups[0].scores[i]), min(range(4), key=lambda i: groups[0].scores[i])
    assert torch.equal(first.images[0], groups[0].images[best])
    if builder == "best_vs_worst":
        assert torch.equal(first.images[1], groups[0].images[worst])
    assert first.extras["chosen_score"] > first.extras["rejected_score"]
    assert [ex.index for ex in trainer.train_examples] == list(range(len(trainer.train_examples)))
    assert "pairs built " + builder in trainer.data_report["load"]
    assert trainer.fit()["status"] == "completed"
