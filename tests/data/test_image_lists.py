"""Pairs from ranked image groups follow the text lists' rules (dpokit.data.build.ranked_pair_indices):
identical images are never paired and a repeated pair of images is built once."""

import pytest
import torch

from dpokit.data.build import ranked_pair_indices
from dpokit.data.image_lists import pair_indices


def images(*values):
    return torch.stack([torch.full((3, 2, 2), float(v)) for v in values])


def test_the_same_rules_as_text_lists():
    scores = [0.9, 0.1, 0.5, 0.3]
    imgs = images(0, 1, 2, 3)
    for strategy in ("best_vs_worst", "best_vs_each", "all_pairs"):
        assert pair_indices(scores, imgs, strategy) == ranked_pair_indices(scores, lambda i: i, strategy)
    assert pair_indices(scores, imgs, "best_vs_worst") == [(0, 1)]
    assert pair_indices(scores, imgs, "best_vs_each") == [(0, 2), (0, 3), (0, 1)]
    assert pair_indices(scores, imgs, "margin", 0.45) == [(0, 3), (0, 1)]


def test_identical_images_are_never_paired_and_a_repeated_pair_is_built_once():
    # images 0 and 2 are the same picture, and so are 1 and 3
    scores = [0.9, 0.2, 0.8, 0.1]
    imgs = images(5, 7, 5, 7)
    built = pair_indices(scores, imgs, "all_pairs")
    assert built == [(0, 1)]  # (0, 3), (2, 1), (2, 3) repeat the same two pictures
    assert pair_indices([0.9, 0.1], images(4, 4), "all_pairs") == []


def test_unknown_builder_and_bad_margin():
    with pytest.raises(ValueError, match="unknown pair builder"):
        pair_indices([1.0, 0.0], images(0, 1), "best")
    with pytest.raises(ValueError, match="margin"):
        pair_indices([1.0, 0.0], images(0, 1), "margin", 0.0)
