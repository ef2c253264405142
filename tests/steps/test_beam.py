"""Value-guided beam search on a hand-built step tree with a hand-built value function."""

import pytest

from dpokit.steps.beam import value_beam_search
from dpokit.steps.expand import Candidate

EOS = 99
# after the last token of the prefix: the candidate steps (ids, log-prob), most likely first
TREE = {
    0: [([1], -0.1), ([2], -1.0), ([3], -3.0)],
    1: [([11, EOS], -0.1), ([12, EOS], -2.0)],
    2: [([21, EOS], -0.1), ([22, EOS], -2.0)],
    3: [([31, EOS], -0.1)],
}
VALUE = {(0, 1): 0.5, (0, 2): 0.7, (0, 3): 0.1, (0, 1, 11, EOS): 0.2, (0, 1, 12, EOS): 0.3,
         (0, 2, 21, EOS): 0.4, (0, 2, 22, EOS): 0.9, (0, 3, 31, EOS): 1.0}


class TreeSampler:
    """Returns the first ``n`` children of the prefix's last token (``greedy``: only the likeliest)."""

    def __init__(self):
        self.calls = []

    def sample(self, prefix, n):
        self.calls.append(tuple(prefix))
        return [Candidate(list(ids), lp, ids[-1] == EOS) for ids, lp in TREE[prefix[-1]][:n]]


def value_fn(sequences, finals):
    return [VALUE[tuple(s)] for s in sequences]


def test_greedy_is_beam_one_with_one_expansion():
    beams = value_beam_search(TreeSampler(), value_fn, [0], beam_width=1, expansions=1)
    assert beams[0].ids == [0, 1, 11, EOS] and beams[0].final


def test_beam_one_follows_the_value_not_the_likelihood():
    sampler = TreeSampler()
    beams = value_beam_search(sampler, value_fn, [0], beam_width=1, expansions=2)
    assert beams[0].ids == [0, 2, 22, EOS] and beams[0].value == 0.9 and beams[0].steps == 2
    assert sampler.calls == [(0,), (0, 2)]  # the lower-valued first step is never expanded


def test_top_b_by_value_are_kept_and_the_best_finished_one_wins():
    sampler = TreeSampler()
    beams = value_beam_search(sampler, value_fn, [0], beam_width=2, expansions=3)
    # step 1 keeps (0,2) 0.7 and (0,1) 0.5, drops (0,3) 0.1, whose continuation would have had value 1.0
    assert (0, 3) not in sampler.calls and set(sampler.calls) == {(0,), (0, 1), (0, 2)}
    assert [b.ids for b in beams] == [[0, 2, 22, EOS], [0, 2, 21, EOS]]
    assert all(b.final for b in beams) and beams[0].value >= beams[1].value


def test_finished_beams_stay_in_the_pool():
    tree_values = dict(VALUE)
    sampler = TreeSampler()
    # a finished candidate at step 1 competes with the continuations of the others
    TREE[4] = [([41, EOS], -0.1), ([5], -0.5)]
    TREE[5] = [([51, EOS], -0.1)]
    tree_values.update({(4, 41, EOS): 0.8, (4, 5): 0.6, (4, 5, 51, EOS): 0.7})
    try:
        beams = value_beam_search(sampler, lambda s, f: [tree_values[tuple(x)] for x in s], [4], beam_width=1,
                                  expansions=2)
    finally:
        del TREE[4], TREE[5]
    assert beams[0].ids == [4, 41, EOS] and sampler.calls == [(4,)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="beam_width"):
        value_beam_search(TreeSampler(), value_fn, [0], beam_width=0)
