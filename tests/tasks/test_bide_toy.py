"""The two-factor BideDPO toy: its scores, and pairs that differ in one factor with the other held."""

import torch

from dpokit.data.conditions import parse_conditioned_record
from dpokit.data.images import load_image_examples
from dpokit.tasks.bide_toy import QuadrantTask, write_bide_records


def test_quadrant_scores_read_the_two_factors():
    task = QuadrantTask()
    g = torch.Generator().manual_seed(0)
    x = task.sample(torch.zeros(400, dtype=torch.long), g)
    a, top = task.mode_score(x) > 0, task.top_score(x) > 0
    assert 0.4 < a.float().mean() < 0.6 and 0.4 < top.float().mean() < 0.6
    # every image has its patch in exactly one quadrant: R and B are blank in the other row half
    half = task.size // 2
    for i in range(20):
        rows = slice(half, None) if top[i] else slice(None, half)
        assert float(x[i, 0, rows].max()) == -1.0 and float(x[i, 2, rows].max()) == -1.0


def test_pairs_differ_in_their_own_factor_only(tmp_path):
    task = QuadrantTask()
    g = torch.Generator().manual_seed(1)
    classes = torch.arange(4).repeat_interleave(32)
    images = task.sample(classes, g)
    counts = write_bide_records(images, classes, task, prefer_a=False, prefer_top=True, folder=str(tmp_path))
    assert counts["text"] > 5 and counts["condition"] > 5
    examples, _ = load_image_examples(str(tmp_path / "bide.jsonl"), size=8, parse=parse_conditioned_record)
    for ex in examples:
        w, l_ = ex.images[0:1], ex.images[1:2]
        if ex.extras["bide_pair"] == 0:  # text pair: prefer B (negative mode score), same row half
            assert float(task.mode_score(w)) < float(task.mode_score(l_))
            assert (task.top_score(w) > 0) == (task.top_score(l_) > 0)
        else:  # condition pair: prefer top, same mode
            assert float(task.top_score(w)) > float(task.top_score(l_))
            assert (task.mode_score(w) > 0) == (task.mode_score(l_) > 0)
