"""MCTS-DPO search rules on hand-built trees, tree-to-pair construction, and the step sampler."""

import math
import random

import pytest
import torch

from dpokit.steps.expand import StepSampler, length_normalised_prior, split_ids
from dpokit.steps.search import (MCTS, Node, SearchConfig, SearchTask, SelfEvaluator, Tree, back_propagate,
                                 child_value, completion_of, next_node, puct_score, select_child)


def tree():
    root = Node([], [1])
    a = Node(["a"], [5], root, 1, prior=0.5, N=2, Q=0.5, r=0.5)
    b = Node(["b"], [6], root, 1, prior=0.1, N=0, Q=1.0, r=0.8)
    root.children = [a, b]
    root.N = 2
    return root, a, b


def test_backup_values_by_hand():
    root, a, b = tree()
    back_propagate([root, b])
    assert b.Q == pytest.approx(0.8) and b.N == 1  # leaf: Q = r + V (V = 0)
    assert root.V == pytest.approx((2 * 0.5 + 1 * 0.8) / 3) and root.N == 3
    assert root.Q == pytest.approx(root.r + root.V)
    # a deeper path: the ancestor averages its children's Q weighted by max(1, N)
    c = Node(["c"], [7], a, 2, N=0, Q=0.0, r=-1.0)
    d = Node(["d"], [8], a, 2, N=3, Q=2.0, r=2.0)
    a.children = [c, d]
    back_propagate([root, a, c], gamma=1.0)
    assert c.Q == pytest.approx(-1.0) and c.N == 1
    assert a.V == pytest.approx((1 * -1.0 + 3 * 2.0) / 4) and a.N == 3
    assert a.Q == pytest.approx(0.5 + a.V)
    assert root.V == pytest.approx((3 * a.Q + 1 * b.Q) / 4)


def test_puct_choice_trades_value_for_exploration():
    root, a, b = tree()
    assert puct_score(root, a, 1.0) == pytest.approx(0.5 + 0.5 * math.sqrt(2) / 3)
    assert select_child(root, 1.0) is b  # higher Q wins at w_exp = 1
    b.Q = 0.6
    assert select_child(root, 1.0) is b  # 0.6 + 0.1*sqrt(2) = 0.741 > 0.5 + 0.236 = 0.736
    b.Q = 0.55
    assert select_child(root, 1.0) is a
    assert select_child(root, 0.0) is b  # no exploration: value alone


def test_child_value_rules():
    parent = Node(["p"], [1], None, depth=1, v=0.4, V=0.3)
    child = Node(["c"], [2], parent, 2)
    child_value(parent, child, conf=0.9, follows_gold=True)
    assert (child.v, child.r, child.Q) == pytest.approx((0.9, 0.5, 0.8))
    deep = Node(["p"], [1], None, depth=6, v=0.4)
    child = Node(["c"], [2], deep, 7)
    child_value(deep, child, conf=0.9, follows_gold=True)
    assert child.v == pytest.approx(0.3)  # conf / max(depth_parent - 3, 1)
    child = Node(["c"], [2], parent, 2)
    child_value(parent, child, conf=0.0, follows_gold=True)
    assert child.v == pytest.approx(0.4) and child.r == 0  # a zero score takes the parent's value
    for outcome, gold, expected in [(True, True, 1.5), (True, False, 0.5 + 1.25), (False, True, 0.5 - 1.0)]:
        child = Node(["answer"], [3], parent, 2, terminal=True, outcome=outcome)
        child_value(parent, child, conf=0.5, follows_gold=gold)
        assert child.v == pytest.approx(expected), (outcome, gold)


def test_next_node_and_completion_chain():
    root, a, b = tree()
    a.N, b.N = 3, 3
    g1, g2 = Node(["x"], [9], a, 2, N=3), Node(["y"], [9], a, 2, N=0)
    a.children = [g1, g2]
    assert next_node(root) is a  # equal visits: diversity (3 - 0) makes a win
    single = Node(["z"], [4], b, 2)
    b.children = [single]
    assert [n.steps[0] for n in completion_of(b)] == ["b", "z"]


def test_pairs_from_a_hand_built_tree():
    root = Node([], [1])
    good = Node(["4 * 2 = 8"], [2], root, 1, Q=1.2, N=5, prior=0.3)
    bad = Node(["4 * 2 = 9"], [3], root, 1, Q=-0.5, N=1, prior=0.6)
    root.children = [good, bad]
    end = Node(["answer 8"], [4], good, 2, terminal=True, outcome=True)
    good.children = [end]
    tail = Node(["answer 9"], [5], bad, 2, terminal=True, outcome=False)
    bad.children = [tail]
    search = MCTS(sampler=None, task=None, tokenizer=None, config=SearchConfig(filter_correct=True))
    pairs = search.pairs(Tree("problem : 4 * 2 .", root, [root, good, end]))
    assert len(pairs) == 1
    p = pairs[0]
    assert p.prefix_steps == [] and p.chosen == ["4 * 2 = 8", "answer 8"] and p.rejected == ["4 * 2 = 9", "answer 9"]
    assert p.chosen_final and p.rejected_final
    assert p.extras == {"chosen_visits": 5.0, "rejected_visits": 1.0}
    end.outcome = False  # the filter drops trees whose chosen path ends wrong
    assert search.pairs(Tree("q", root, [root, good, end])) == []


def test_prior_and_split_ids():
    assert length_normalised_prior(-2.0, 4, 1.25) == pytest.approx(math.exp(-2.0 / 4 ** 1.25))
    assert split_ids([3, 9, 4, 4, 9, 2], [9]) == [[3, 9], [4, 4, 9], [2]]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from dpokit.tasks.arithmetic import ArithmeticTask
    from dpokit.tiny import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(ArithmeticTask().vocabulary_corpus(), vocab_size=64, word_level=True)
    return tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, seed=0, tokenizer=tokenizer), tokenizer


@pytest.mark.parametrize("shared", [True, False])
def test_sampler_log_probs_match_a_full_forward(model_and_tokenizer, shared):
    model, tokenizer = model_and_tokenizer
    sep = [tokenizer.convert_tokens_to_ids(";")]
    sampler = StepSampler(model, sep, tokenizer.eos_token_id, max_step_tokens=12, shared=shared, seed=3)
    prefix = tokenizer("problem : 3 + 4 .")["input_ids"]
    for cand in sampler.sample(prefix, 3):
        assert 1 <= cand.length <= 12
        assert all(t not in sep + [tokenizer.eos_token_id] for t in cand.ids[:-1])
        assert cand.final == (cand.ids[-1] == tokenizer.eos_token_id)
        assert cand.logp == pytest.approx(sampler.score(prefix, cand.ids), abs=1e-4)
    assert sampler.stats.expansions == 1 and sampler.stats.generated_tokens > 0


def test_shared_prefix_reads_fewer_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prefix = tokenizer("problem : 3 + 4 * 2 - 1 . 4 * 2 = 8 ;")["input_ids"]
    counts = {}
    for shared in (True, False):
        sampler = StepSampler(model, [tokenizer.convert_tokens_to_ids(";")], tokenizer.eos_token_id, 8, shared=shared)
        sampler.sample(prefix, 4)
        counts[shared] = sampler.stats.processed_tokens / sampler.stats.generated_tokens
    assert counts[True] < counts[False]


def test_self_evaluator_reads_the_correct_probability(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    evaluator = SelfEvaluator(model, tokenizer, correct_words=("answer",), template="{question} {gold} {solution}")
    conf = evaluator("problem : 3 + 4 .", "3 + 4 = 7", "3 + 4 = 8")
    ids = torch.tensor([tokenizer("problem : 3 + 4 . 3 + 4 = 7 3 + 4 = 8")["input_ids"]])
    with torch.no_grad():
        expected = torch.softmax(model(input_ids=ids).logits[0, -1], -1)[tokenizer.convert_tokens_to_ids("answer")]
    assert 0 <= conf <= 1 and conf == pytest.approx(float(expected), abs=1e-6)


def test_search_runs_end_to_end_with_gold_injection(model_and_tokenizer):
    from dpokit.tasks.arithmetic import ArithmeticTask

    model, tokenizer = model_and_tokenizer
    task = ArithmeticTask()
    sep = [tokenizer.convert_tokens_to_ids(";")]
    decode = lambda ids: tokenizer.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
    verdict = lambda p, s: task.verify(task.problem_of(p), s)  # noqa: E731
    search_task = SearchTask(evaluate=lambda p, s: float(all(verdict(p, s).steps)),
                             outcome=lambda p, s: verdict(p, s).outcome, decode=decode,
                             gold=lambda p: task.problem_of(p).gold())
    search = MCTS(StepSampler(model, sep, tokenizer.eos_token_id, 8, seed=0), search_task, tokenizer,
                  SearchConfig(n_iters=2, include_gold=True, depth_limit=3))
    result = search.search("problem : 3 + 4 * 2 .")
    assert result.path[-1].terminal and result.correct  # the gold rest is always a candidate at the root
    pairs = search.pairs(result)
    assert pairs and pairs[0].chosen == ["4 * 2 = 8", "3 + 8 = 1 1", "answer 1 1"]
