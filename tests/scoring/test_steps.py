"""The step scorer: per-step sums of LM log-probs, on any layout, through step_dpo."""

import pytest
import torch

from dpokit.data import collate, tokenize_examples
from dpokit.data.step_pairs import step_pair_as_pair
from dpokit.data.steps import StepPair
from dpokit.losses import Needs, get_loss
from dpokit.scoring import build_scorer
from dpokit.scoring.lm.engine import LogProbEngine
from dpokit.scoring.steps import StepScorer, segment_sums, separator_ids, step_index
from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticTask
from dpokit.tiny import tiny_llama, train_tokenizer

PAIRS = [
    StepPair("problem : 3 + 4 * 2 .", ["4 * 2 = 8"], ["3 + 8 = 1 1", "answer 1 1"], ["3 + 8 = 1 2", "answer 1 2"],
             True, True),
    StepPair("problem : 5 * 2 - 1 .", [], ["5 * 2 = 1 0"], ["5 * 2 = 9", "9 - 1 = 8"]),
]


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_tokenizer(ArithmeticTask().vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, seed=0, tokenizer=tokenizer)
    model.config._attn_implementation = "sdpa"
    reference = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, seed=1, tokenizer=tokenizer)
    return tokenizer, model, reference


def batch_of(pairs, tokenizer):
    examples, _ = tokenize_examples([step_pair_as_pair(p, tokenizer, STEP_SEPARATOR) for p in pairs], tokenizer)
    return collate(examples, "pairs")


def test_step_index_counts_separators():
    assert step_index([5, 9, 1, 5, 1, 7], [1]) == [0, 0, 0, 1, 1, 2]
    lp = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    index = torch.tensor([[0, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False]])
    assert segment_sums(lp, index, mask).tolist() == [[3.0, 3.0]]


@pytest.mark.parametrize("layout", ["padded", "prompt_shared"])
def test_step_sums_equal_each_step_scored_after_its_prefix(setup, layout):
    tokenizer, model, _ = setup
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    scorer = StepScorer(LogProbEngine(Needs(reference=False), tokenizer.pad_token_id, layout), sep)
    batch = batch_of(PAIRS, tokenizer)
    with torch.no_grad():
        sums = scorer.step_logps(model, batch.groups)  # rows: chosen_0, rejected_0, chosen_1, rejected_1
        plain = LogProbEngine(Needs(reference=False), tokenizer.pad_token_id)
        for r, (pair, which) in enumerate([(p, w) for p in PAIRS for w in ("chosen", "rejected")]):
            steps = getattr(pair, which)
            for j in range(len(steps)):
                final = getattr(pair, f"{which}_final") and j == len(steps) - 1
                one = StepPair(pair.prompt, pair.prefix_steps + steps[:j], [steps[j]], ["x"], final, False)
                b = batch_of([one], tokenizer)
                expected = plain.token_logprobs(model, [(b.groups[0][0], [b.groups[0][1][0]])]).sums[0]
                torch.testing.assert_close(sums[r, j], expected, atol=1e-5, rtol=1e-5)
            assert torch.all(sums[r, len(steps):] == 0)


def test_loss_inputs_carry_step_indices_and_step_dpo_uses_them(setup):
    tokenizer, model, reference_model = setup
    from dpokit.reference import ModelReference

    needs = get_loss("step_dpo").needs
    scorer = StepScorer(LogProbEngine(needs, tokenizer.pad_token_id, "prompt_shared"), separator_ids(tokenizer, ";"))
    batch = batch_of(PAIRS, tokenizer)
    reference = ModelReference(reference_model)
    inputs = scorer.loss_inputs(model, batch, reference)
    index = inputs.token_stats["chosen/step_index"]
    assert index.shape == inputs.chosen_token_mask.shape and index[0].max() == 1 and index[1].max() == 0
    # discount 0: the first steps alone, scored as one-step pairs, under dpo
    first = [StepPair(p.prompt, p.prefix_steps, p.chosen[:1], p.rejected[:1], p.chosen_final and len(p.chosen) == 1,
                      p.rejected_final and len(p.rejected) == 1) for p in PAIRS]
    plain = LogProbEngine(get_loss("dpo").needs, tokenizer.pad_token_id)
    expected = get_loss("dpo", beta=0.5)(plain.loss_inputs(model, batch_of(first, tokenizer), reference)).loss
    got = get_loss("step_dpo", beta=0.5, discount=0.0)(inputs).loss
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.sum().backward()  # gradients reach the policy through the segment sums
    assert model.lm_head.weight.grad is not None
    model.zero_grad()


def test_registered_as_a_scorer_kind(setup):
    tokenizer, model, _ = setup
    from types import SimpleNamespace

    config = SimpleNamespace(train=SimpleNamespace(layout="padded", chunk_size=64, projection="chunked", step_separator=";"))
    scorer = build_scorer(config, Needs(), tokenizer, model, kind="steps")
    assert isinstance(scorer, StepScorer) and scorer.separator_ids == [tokenizer.convert_tokens_to_ids(";")]
