"""Building training examples (dpokit.data.build): pair builders, multi-objective extras (MADPO, MODPO),
label noise, curriculum stages and the config-driven preparation."""

import pytest
import torch

from dpokit.data import DataError, collate, tokenize_examples
from dpokit.data.build import (
    curriculum_stages,
    inject_label_noise,
    inject_list_noise,
    pairs_from_list,
    pairs_from_lists,
    prepare_examples,
    scalarize,
)

from .conftest import item


# ---- pair builders --------------------------------------------------------------------------------
def names(pairs):
    return [(p.chosen.strip(), p.rejected.strip()) for p in pairs]


def test_pair_builders():
    lst = item([0.2, 0.9, 0.5, 0.9, -1.0])  # r1 and r3 tie for best
    assert names(pairs_from_list(lst, "best_vs_worst")) == [("r1", "r4")]
    assert names(pairs_from_list(lst, "best_vs_each")) == [("r1", "r2"), ("r1", "r0"), ("r1", "r4")]
    all_pairs = names(pairs_from_list(lst, "all_pairs"))
    assert len(all_pairs) == 10 - 1  # every pair but the tied (r1, r3)
    assert ("r1", "r3") not in all_pairs and ("r3", "r1") not in all_pairs
    assert names(pairs_from_list(lst, "margin", min_margin=0.7)) == [("r1", "r0"), ("r1", "r4"), ("r3", "r0"),
                                                                     ("r3", "r4"), ("r2", "r4"), ("r0", "r4")]
    assert names(pairs_from_list(lst, "best_vs_each", min_margin=0.5)) == [("r1", "r0"), ("r1", "r4")]
    assert pairs_from_list(item([1.0, 1.0, 1.0]), "all_pairs") == []  # all ties: nothing to prefer
    with pytest.raises(ValueError, match="min_margin > 0"):
        pairs_from_list(lst, "margin")
    with pytest.raises(ValueError, match="unknown pair builder"):
        pairs_from_list(lst, "random")


def test_duplicate_texts_are_not_paired_twice():
    lst = item([1, 1, 0, 0], [" even", " even", " odd", " even"])
    assert names(pairs_from_list(lst, "all_pairs")) == [("even", "odd")]
    assert pairs_from_list(item([1, 0], [" same", " same"])) == []


def test_pairs_carry_madpo_and_modpo_extras():
    lst = item([3.0, 1.0, 2.0], objectives={"safe": [0.1, 0.9, 0.5], "short": [1.0, 2.0, 3.0]},
               extras={"weight": 2.0})
    [pair] = pairs_from_list(lst, "best_vs_worst")
    assert pair.extras == {"weight": 2.0, "rm_margin": 2.0, "modpo_chosen_scores": [0.1, 1.0],
                           "modpo_rejected_scores": [0.9, 2.0]}
    assert "response 0 over 1" in pair.location
    assert len(pairs_from_lists([lst, lst], "all_pairs")) == 6


def test_pair_extras_feed_madpo_and_modpo(tokenizer):
    from dpokit.losses import LossInputs, apply_modifiers, get_loss

    lst = item([3.0, 1.0], objectives={"safe": [0.1, 0.9]})
    pairs = pairs_from_lists([lst, item([0.0, 2.0], objectives={"safe": [0.4, 0.3]})])
    batch = collate(tokenize_examples(pairs, tokenizer, max_length=32)[0], "pairs")
    torch.testing.assert_close(batch.extras["rm_margin"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(batch.extras["modpo_chosen_scores"], torch.tensor([[0.1], [0.3]]))
    torch.testing.assert_close(batch.extras["modpo_rejected_scores"], torch.tensor([[0.9], [0.4]]))
    inputs = LossInputs(policy_chosen_logps=torch.tensor([-1.0, -2.0]), policy_rejected_logps=torch.tensor([-2.0, -1.0]),
                        reference_chosen_logps=torch.tensor([-1.5, -1.5]), reference_rejected_logps=torch.tensor([-1.5, -1.5]),
                        extras=dict(batch.extras))
    assert torch.isfinite(get_loss("modpo")(inputs).loss).all()
    assert torch.isfinite(apply_modifiers(get_loss("dpo"), {"madpo": True})(inputs).loss).all()


def test_scalarize_objectives():
    lst = item([1.0, 0.0], objectives={"safe": [0.0, 4.0]})
    [mixed] = scalarize([lst], {"scores": 1.0, "safe": 0.5})
    assert mixed.scores == [1.0, 2.0] and mixed.objectives == lst.objectives
    with pytest.raises(DataError, match="scores_nope"):
        scalarize([lst], {"nope": 1.0})


# ---- label noise ----------------------------------------------------------------------------------
def test_label_noise_flips_the_requested_fraction_reproducibly():
    pairs = pairs_from_lists([item([float(i), 0.0], objectives={"o": [1.0, 2.0]}) for i in range(1, 41)])
    noisy, flipped = inject_label_noise(pairs, 0.25, seed=3)
    assert len(flipped) == 10 and flipped == inject_label_noise(pairs, 0.25, seed=3)[1]
    assert flipped != inject_label_noise(pairs, 0.25, seed=4)[1]
    for i, (before, after) in enumerate(zip(pairs, noisy)):
        if i in flipped:
            assert (after.chosen, after.rejected) == (before.rejected, before.chosen)
            assert after.extras["rm_margin"] == -before.extras["rm_margin"]
            assert after.extras["modpo_chosen_scores"] == before.extras["modpo_rejected_scores"]
        else:
            assert after is before


def test_list_noise_swaps_scores_of_differently_scored_responses():
    lists = [item([2.0, 1.0, 1.0, 0.0]) for _ in range(10)] + [item([1.0, 1.0])]
    noisy, picked = inject_list_noise(lists, 0.5, seed=0)
    assert len(picked) == 5 and 10 not in picked  # the all-tied list cannot be made noisy
    for i, lst in enumerate(noisy):
        assert sorted(lst.scores) == sorted(lists[i].scores)
        assert (lst.scores != lists[i].scores) == (i in picked)


# ---- curriculum and Sem-DPO -----------------------------------------------------------------------
def test_curriculum_stages_easy_to_hard():
    pairs = pairs_from_lists([item([float(g), 0.0]) for g in (0.5, 3.0, 1.0, 2.0, 0.1, 5.0)])
    assert curriculum_stages(pairs, 3) == [2, 0, 1, 1, 2, 0]  # biggest gaps (easiest) first
    assert curriculum_stages(pairs, 1) == [0] * 6


def test_prepare_examples_follows_the_config():
    from dpokit.config import DataConfig

    lists = [item([float(i % 3), 0.0, 1.0]) for i in range(12)]
    d = DataConfig(train="x", kind="lists", pair_builder="all_pairs", label_noise=0.5, label_noise_seed=1,
                   curriculum={"stages": 2}, sem_alpha=1.0)
    pairs, plan = prepare_examples(lists, d, "pairs", training=True)
    assert plan.pairs_built == len(pairs) > 0 and len(plan.noisy) == round(0.5 * len(pairs))
    assert all("sem_weight" in p.extras for p in pairs)
    assert sorted(set(plan.stages)) == [0, 1] and plan.num_stages == 2
    evaluation, eval_plan = prepare_examples(lists, d, "pairs", training=False)
    assert eval_plan.noisy == [] and eval_plan.stages is None
    same, _ = prepare_examples(lists, d, "lists", training=False)
    assert same == lists
    unpaired, _ = prepare_examples(lists, DataConfig(train="x", kind="lists"), "unpaired", training=True)
    assert len(unpaired) == 2 * len(pairs_from_lists(lists)) and {ex.label for ex in unpaired} == {True, False}
    noisy, plan = prepare_examples(unpaired, DataConfig(train="x", label_noise=0.25), "unpaired", training=True)
    assert sum(a.label != b.label for a, b in zip(unpaired, noisy)) == len(plan.noisy) == round(0.25 * len(unpaired))
