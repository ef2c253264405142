"""The OREO value model and its scorer: V(s_t) aligned with the response tokens, gradients to the value
model, step indices, and the oreo loss trained through it."""

import torch

from dpokit.data import collate, tokenize_examples
from dpokit.data.formats import RankedList
from dpokit.losses import get_loss
from dpokit.reference import ModelReference
from dpokit.scoring.lm.engine import LogProbEngine
from dpokit.scoring.steps import separator_ids
from dpokit.steps.value import ValueModel, ValueScorer
from dpokit.tasks.arithmetic import ArithmeticTask
from dpokit.tiny import tiny_llama, train_tokenizer


def setup():
    tokenizer = train_tokenizer(ArithmeticTask().vocabulary_corpus(), vocab_size=64, word_level=True)
    policy = tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, seed=0, tokenizer=tokenizer)
    reference = tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, seed=0, tokenizer=tokenizer)
    lists = [RankedList("problem : 2 + 2 .", [" 2 + 2 = 4 ; answer 4", " 2 + 2 = 5 ; answer 5", " answer 4"],
                        [1.0, 0.0, 1.0]),
             RankedList("problem : 3 * 3 .", [" 3 * 3 = 9 ; answer 9", " answer 6"], [1.0, 0.0])]
    examples, _ = tokenize_examples(lists, tokenizer)
    return tokenizer, policy, reference, collate(examples, "lists")


def test_values_are_aligned_with_the_response_tokens_and_train():
    tokenizer, policy, reference, batch = setup()
    value = ValueModel.from_policy(policy)
    torch.nn.init.normal_(value.head.weight, std=0.5)
    needs = get_loss("oreo", level="step").needs
    scorer = ValueScorer(LogProbEngine(needs, tokenizer.pad_token_id), value, separator_ids(tokenizer, ";"))
    inputs = scorer.loss_inputs(policy, batch, ModelReference(reference))
    values, steps, mask = inputs.extras["list_values"], inputs.extras["token_step"], inputs.list_token_mask
    assert values.shape == mask.shape == steps.shape
    prompt, completions = batch.groups[0]
    for k, completion in enumerate(completions):
        for t in range(len(completion)):  # V(s_t): the value model on the prompt and the tokens before t
            alone = value(torch.tensor([list(prompt) + list(completion[:t])]))[0, -1]
            torch.testing.assert_close(values[0, k, t], alone, atol=1e-5, rtol=1e-5)
        assert torch.all(values[0, k, len(completion):] == 0)
    assert steps[0, 0, :len(completions[0])].max() == 1 and steps[0, 2].max() == 0 and steps[1, 2].max() == -1
    whole = list(prompt) + list(completions[0])  # ends with EOS: its state value is V(s_{T-1}), before EOS
    assert abs(value.state_values([whole], [True])[0] - float(values[0, 0, len(completions[0]) - 1].detach())) < 1e-5
    assert abs(value.state_values([whole[:-1]], [False])[0] - float(values[0, 0, len(completions[0]) - 1].detach())) < 1e-5
    out = get_loss("oreo", level="step")(inputs)
    out.loss.mean().backward()
    assert value.head.weight.grad.abs().sum() > 0  # the value loss reaches the value model
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_a_fresh_value_model_starts_at_zero():
    tokenizer, policy, _, batch = setup()
    value = ValueModel.from_policy(policy)
    assert torch.all(value.response_values(batch.groups) == 0)
    assert value.trunk is not policy.base_model
