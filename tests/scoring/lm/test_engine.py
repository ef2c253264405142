"""The log-prob engine against a naive per-example computation with full logits."""

import copy

import pytest
import torch

from dpokit.data import collate, tokenize_examples
from dpokit.scoring.lm.engine import LogProbEngine
from dpokit.losses import Needs
from dpokit.reference import ModelReference

from conftest import make_pairs


def naive_token_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    positions = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return torch.stack([logp[t, completion[j]] for j, t in enumerate(positions)]), logp[list(positions)]


@pytest.fixture
def batch(tokenizer):
    from dpokit.data import PreferencePair

    rows = make_pairs(5, seed=3)
    examples = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    tokenized, _ = tokenize_examples(examples, tokenizer, max_length=64)
    return collate(tokenized)


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_engine_matches_naive_per_example(tiny_model, tokenizer, batch, chunk_size):
    engine = LogProbEngine(Needs(reference=False), tokenizer.pad_token_id, chunk_size=chunk_size)
    inputs = engine.loss_inputs(tiny_model, batch)
    for i, (prompt, (chosen, rejected)) in enumerate(batch.groups):
        for which, completion in (("chosen", chosen), ("rejected", rejected)):
            expected, _ = naive_token_logps(tiny_model, prompt, completion)
            tokens = getattr(inputs, f"policy_{which}_token_logps")[i]
            mask = getattr(inputs, f"{which}_token_mask")[i]
            assert int(mask.sum()) == len(completion)
            torch.testing.assert_close(tokens[mask], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(getattr(inputs, f"policy_{which}_logps")[i], expected.sum(), atol=1e-4, rtol=1e-5)
            assert float(getattr(inputs, f"{which}_lengths")[i]) == len(completion)


def test_engine_gradients_match_naive(tiny_model, tokenizer, batch):
    engine = LogProbEngine(Needs(reference=False), tokenizer.pad_token_id, chunk_size=5)
    inputs = engine.loss_inputs(tiny_model, batch)
    (inputs.policy_chosen_logps.sum() - 0.5 * inputs.policy_rejected_logps.sum()).backward()
    ours = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    total = 0
    for prompt, (chosen, rejected) in batch.groups:
        total = total + naive_token_logps(tiny_model, prompt, chosen)[0].sum()
        total = total - 0.5 * naive_token_logps(tiny_model, prompt, rejected)[0].sum()
    total.backward()
    for name, param in tiny_model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_token_statistics_match_full_vocabulary(tiny_model, tokenizer, batch):
    from dpokit.tiny import tiny_llama

    reference_model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=1)
    reference = ModelReference(reference_model)
    engine = LogProbEngine(Needs(token_stats=("entropy", "sum_p2", "ref_kl")), tokenizer.pad_token_id, chunk_size=3)
    inputs = engine.loss_inputs(tiny_model, batch, reference)
    prompt, (chosen, _) = batch.groups[1]
    _, logp = naive_token_logps(tiny_model, prompt, chosen)
    ref_expected, ref_logp = naive_token_logps(reference_model, prompt, chosen)
    p, q = logp.exp(), ref_logp.exp()
    mask = inputs.chosen_token_mask[1]
    torch.testing.assert_close(inputs.token_stats["chosen/entropy"][1][mask], -(p * logp).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inputs.token_stats["chosen/sum_p2"][1][mask], (p * p).sum(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(inputs.token_stats["chosen/ref_kl"][1][mask], (q * (ref_logp - logp)).sum(-1),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inputs.reference_chosen_token_logps[1][mask], ref_expected, atol=1e-5, rtol=1e-5)


def test_reference_identical_to_policy_gives_zero_margin(tiny_model, tokenizer, batch):
    engine = LogProbEngine(Needs(), tokenizer.pad_token_id)
    inputs = engine.loss_inputs(tiny_model, batch, ModelReference(copy.deepcopy(tiny_model)))
    torch.testing.assert_close(inputs.margin(), torch.zeros(len(batch)), atol=1e-5, rtol=0)
    assert inputs.reference_chosen_logps.grad_fn is None


def test_missing_reference_is_an_error(tiny_model, tokenizer, batch):
    with pytest.raises(ValueError, match="needs a reference"):
        LogProbEngine(Needs(), tokenizer.pad_token_id).loss_inputs(tiny_model, batch, None)


def test_mismatched_kl_batch_rotates_completions(tiny_model, tokenizer):
    from dpokit.data import UnpairedExample

    examples = [UnpairedExample(f"Question: {w}", f" {w} yes", i % 2 == 0) for i, w in enumerate(["cat", "dog", "mat"])]
    tokenized, _ = tokenize_examples(examples, tokenizer)
    batch = collate(tokenized, "unpaired")
    engine = LogProbEngine(Needs(reference=False, data="unpaired", mismatched_kl=True), tokenizer.pad_token_id)
    inputs = engine.loss_inputs(tiny_model, batch)
    prompt0 = batch.groups[0][0]
    last_completion = batch.groups[2][1][0]
    expected, _ = naive_token_logps(tiny_model, prompt0, last_completion)
    torch.testing.assert_close(inputs.kl_policy_logps[0], expected.sum(), atol=1e-4, rtol=1e-5)
    assert inputs.labels.tolist() == [True, False, True]
