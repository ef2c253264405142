"""The per-segment video toy: modes per half, segment scores, and the disagreeing pairs it trains on."""

import pytest
import torch

from dpokit.tasks.segment_video import SegmentVideoTask, disagreeing_pairs, in_target


def test_each_half_is_in_one_mode_and_the_score_says_which():
    task = SegmentVideoTask(frames=4)
    x = task.sample(400, torch.Generator().manual_seed(0))
    assert x.shape == (400, 3, 4, 8, 8) and x.min() >= -1 and x.max() <= 1
    scores = task.segment_scores(x)
    red_left = x[:, 0, :, :, :4].mean((2, 3)) > 0  # [n, F]
    assert torch.equal(red_left[:, 0], red_left[:, 1]) and torch.equal(red_left[:, 2], red_left[:, 3])
    assert torch.equal(scores[:, 0] > 0, red_left[:, 0]) and torch.equal(scores[:, 1] > 0, red_left[:, 2])
    fraction = (scores > 0).float().mean(0)
    assert ((fraction - 0.5).abs() < 0.08).all()  # equally likely, independently per half
    assert abs(float(((scores[:, 0] > 0) == (scores[:, 1] > 0)).float().mean()) - 0.5) < 0.08


def test_disagreeing_pairs_label_each_segment_by_the_target():
    task = SegmentVideoTask(frames=4)
    x = task.sample(200, torch.Generator().manual_seed(1))
    dense, clip = disagreeing_pairs(task, x, ("A", "B"))
    assert dense and len(dense) == len(clip)
    for d, c in zip(dense, clip):
        assert sorted(d.segment_labels) == [-1, 1] and d.segments == [(0, 2), (2, 4)]
        s = task.segment_scores(d.images) * torch.tensor([1.0, -1.0])  # closer to (A, B): higher
        for k, label in enumerate(d.segment_labels):
            assert (s[0, k] > s[1, k]) == (label == 1)
        total = task.segment_scores(c.images) @ torch.tensor([1.0, -1.0])
        assert total[0] >= total[1]  # the clip-level winner first
    assert in_target(task, x, ("A", "B")) == pytest.approx(
        [float((task.segment_scores(x)[:, 0] > 0).float().mean()), float((task.segment_scores(x)[:, 1] <= 0).float().mean())])


@pytest.mark.slow
def test_the_experiment_runs_end_to_end(tmp_path):
    from dpokit.tasks.segment_video import run_segment_experiment

    rows = run_segment_experiment(seed=0, pretrain_steps=3, pretrain_batch=8, pairs_from=96, sample_steps=2, eval_n=8,
                                  epochs=1, batch=8, pretrained_dir=str(tmp_path / "pre"), log=lambda m: None)
    assert [(r["target"], r["loss"]) for r in rows] == [("AB", "dense_segment_dpo"), ("AB", "dpo"),
                                                         ("BA", "dense_segment_dpo"), ("BA", "dpo")]
    assert all(len(r["before"]) == 2 and len(r["after"]) == 2 and r["pairs"] > 0 for r in rows)
    assert (tmp_path / "pre" / "config.json").exists()  # a second call loads it
    again = run_segment_experiment(seed=0, pairs_from=96, sample_steps=2, eval_n=8, epochs=1, batch=8,
                                   pretrained_dir=str(tmp_path / "pre"), log=lambda m: None)
    assert [r["before"] for r in again] == [r["before"] for r in rows]
