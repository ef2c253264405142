"""Ranked lists on the data side: parsing and its errors, tokenization, collation, pair builders,
multi-objective extras (MADPO, MODPO), label noise, curriculum stages and Sem-DPO weights."""

import math
import re

import pytest
import torch

from dpokit.data import DataError, RankedList, collate, load_examples, tokenize_examples
from dpokit.data.build import (
    curriculum_stages,
    inject_label_noise,
    inject_list_noise,
    pairs_from_list,
    pairs_from_lists,
    prepare_examples,
    scalarize,
    semantic_weights,
)
from dpokit.data.embed import HashedNgramEmbedder, cosine_distance

from conftest import write_jsonl


def item(scores, responses=None, **kw):
    responses = responses or [f" r{i}" for i in range(len(scores))]
    return RankedList("Q:", responses, list(scores), location="d.jsonl:1", **kw)


# ---- parsing --------------------------------------------------------------------------------------
def test_list_records_parse(tmp_path):
    rows = [
        {"prompt": "p", "responses": [" a", " b", " c"], "scores": [0.5, 2, -1], "weight": 2.0},
        {"prompt": "q", "responses": [" a", " b"], "ranks": [2, 1], "scores_safety": [1, 0],
         "metadata": [{"model": "x"}, {"model": "y"}], "weight": 1},
        {"prompt": "r", "responses": [" a", " b"], "scores": {"help": [1, 0], "safe": [0, 1]}, "weight": 1},
        {"prompt": "s", "chosen": " yes", "rejected": " no", "weight": 1},  # a pair is a two-response list
    ]
    a, b, c, d = load_examples(write_jsonl(tmp_path / "l.jsonl", rows), kind="lists")
    assert a.scores == [0.5, 2.0, -1.0] and a.extras == {"weight": 2.0} and a.location == "l.jsonl:1"
    assert b.ranks == [2.0, 1.0] and b.scores == [-2.0, -1.0] and b.primary == "ranks"
    assert b.objectives == {"safety": [1.0, 0.0]} and b.metadata[1] == {"model": "y"}
    assert c.primary == "help" and c.scores == [1.0, 0.0] and c.objectives == {"safe": [0.0, 1.0]}
    assert d.responses == [" yes", " no"] and d.scores == [1.0, 0.0]


@pytest.mark.parametrize("record, field, problem", [
    ({"prompt": "p", "responses": [" a"], "scores": [1]}, "responses", "has 1 response"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, float("nan")]}, "scores", "entry 1 is NaN"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 2, 3]}, "scores", "has 3 values for 2 responses"),
    ({"prompt": "p", "responses": [" a", " b"], "ranks": [1]}, "ranks", "has 1 values for 2 responses"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 0], "ranks": [1, 2]}, "ranks", "together"),
    ({"prompt": "p", "responses": [" a", " b"]}, "scores", "is missing"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, "x"]}, "scores", "entry 1 must be a number"),
    ({"prompt": "p", "responses": [" a", " b"], "ranks": [0, 1]}, "ranks", "ranks start at 1"),
    ({"prompt": "p", "responses": [" a", " b"], "scores": [1, 0], "scores_x": [1]}, "scores_x", "has 1 values"),
    ({"responses": [" a", " b"], "scores": [1, 0]}, "prompt", "is missing"),
    ({"prompt": "p", "responses": [" a", 3], "scores": [1, 0]}, "responses[1]", "must be a string"),
])
def test_list_errors_name_file_line_and_field(tmp_path, record, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "responses": [" a", " b"], "scores": [1, 0]}\n'
                    + __import__("json").dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2, field '{re.escape(field)}'.*{problem}"):
        load_examples(str(path), kind="lists")


def test_list_record_under_pairs_kind_points_to_lists(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "p", "responses": [" a", " b"], "scores": [1, 0]}])
    with pytest.raises(DataError, match="data.kind: lists"):
        load_examples(path)


# ---- tokenize and collate -------------------------------------------------------------------------
def test_tokenize_and_collate_lists_of_different_k(tokenizer):
    lists = [item([1.0, 0.0, 0.5], [" the cat", " a dog", " red"], objectives={"safe": [0.0, 1.0, 1.0]}),
             item([2.0, 3.0], [" yes", " no"], objectives={"safe": [1.0, 0.0]})]
    tokenized, _ = tokenize_examples(lists, tokenizer, max_length=32)
    assert [len(t.completions) for t in tokenized] == [3, 2]
    assert tokenized[0].scores == [1.0, 0.0, 0.5]
    batch = collate(tokenized, "lists")
    assert batch.kind == "lists" and len(batch.groups[1][1]) == 2
    torch.testing.assert_close(batch.scores, torch.tensor([[1.0, 0.0, 0.5], [2.0, 3.0, 0.0]]))
    torch.testing.assert_close(batch.extras["scores_safe"], torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(DataError, match="same score columns"):
        collate(tokenize_examples([lists[0], item([1.0, 0.0])], tokenizer, max_length=32)[0], "lists")


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


def test_hashed_embedder_and_semantic_weights():
    emb = HashedNgramEmbedder(dim=256)
    e = emb.embed(["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics"])
    assert e.shape == (3, 256)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e, HashedNgramEmbedder(dim=256).embed(
        ["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics"]))
    d = cosine_distance(e[[0, 0]], e[[1, 2]])
    assert d[0] < 0.3 < d[1]
    pairs = pairs_from_lists([item([1.0, 0.0], [" the cat sat on the mat", " no"]),
                              item([1.0, 0.0], [" quantum chromodynamics", " no"])])
    pairs = [p.__class__("the cat sat on a mat", p.chosen, p.rejected, p.extras, p.location) for p in pairs]
    weighted = semantic_weights(pairs, emb, alpha=2.0)
    w = [p.extras["sem_weight"] for p in weighted]
    assert 0 < w[1] < w[0] <= 1
    expected = math.exp(-2.0 * float(cosine_distance(emb.embed(["the cat sat on a mat"]),
                                                     emb.embed([" the cat sat on the mat"]))))
    assert w[0] == pytest.approx(expected, rel=1e-6)


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


def test_hf_mean_pool_embedder_on_a_local_model(tiny_model, tokenizer):
    from dpokit.data.embed import HFMeanPoolEmbedder

    emb = HFMeanPoolEmbedder(tiny_model, tokenizer)
    e = emb.embed(["the cat sat", "the cat sat", "why how what when"])
    assert e.shape == (3, tiny_model.config.hidden_size)
    torch.testing.assert_close(e[0], e[1])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=1e-5)
