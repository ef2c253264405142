"""Model-side diagnostics on tiny in-process models: checked against brute-force full-logit computations."""

import math

import pytest
import torch

from dpokit.eval.diagnostics import block_outputs, completion_statistics, layer_trace, sample_from_ids
from dpokit.eval.metrics import topk_indicators
from dpokit.tiny import tiny_llama


def _groups(tokenizer):
    prompts = ["Question: the cat sat\nAnswer:", "Question: why red\nAnswer:"]
    answers = [[" on the mat", " no"], [" blue sky", " happy dog ran"]]
    eos = tokenizer.eos_token_id
    return [(tokenizer(p)["input_ids"], [tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in group])
            for p, group in zip(prompts, answers)]


def _full_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    return torch.log_softmax(logits[len(prompt) - 1:len(prompt) + len(completion) - 1], -1)


def test_completion_statistics_against_full_logits(tokenizer, tiny_model):
    other = tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, tokenizer=tokenizer, seed=1)
    groups = _groups(tokenizer)
    stats = completion_statistics(tiny_model, groups, tokenizer.pad_token_id, reference=other, k=10, chunk_size=3)
    row = 0
    for prompt, completions in groups:
        for completion in completions:
            lp = _full_logps(tiny_model, prompt, completion)
            lq = _full_logps(other, prompt, completion)
            target = torch.tensor(completion)[:, None]
            mass, entropy = topk_indicators(lp, 10)
            kl = (lp.exp() * (lp - lq)).sum(-1).sum()
            assert float(stats["logps"][row]) == pytest.approx(float(lp.gather(-1, target).sum()), abs=1e-4)
            assert float(stats["ref_logps"][row]) == pytest.approx(float(lq.gather(-1, target).sum()), abs=1e-4)
            assert float(stats["topk_mass"][row]) == pytest.approx(float(mass.sum()), abs=1e-4)
            assert float(stats["topk_entropy"][row]) == pytest.approx(float(entropy.sum()), abs=1e-4)
            assert float(stats["kl"][row]) == pytest.approx(float(kl), abs=1e-4)
            assert int(stats["lengths"][row]) == len(completion)
            row += 1


def test_kl_and_drift_are_zero_for_identical_models(tokenizer, tiny_model):
    stats = completion_statistics(tiny_model, _groups(tokenizer), tokenizer.pad_token_id, reference=tiny_model, pool=True)
    assert torch.allclose(stats["kl"], torch.zeros_like(stats["kl"]), atol=1e-6)
    assert torch.equal(stats["logps"], stats["ref_logps"])
    assert torch.allclose(stats["pooled"], stats["ref_pooled"])
    per_position = stats["topk_entropy"] / stats["lengths"]
    assert bool((per_position <= math.log2(10) + 1e-5).all()) and bool((per_position > 0).all())


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tokenizer, tiny_model):
    prompts = [tokenizer("Question: the cat\nAnswer:")["input_ids"], tokenizer("Question: why\nAnswer:")["input_ids"]]
    state = torch.random.get_rng_state()
    first = sample_from_ids(tiny_model, tokenizer, prompts, n=3, max_new_tokens=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = sample_from_ids(tiny_model, tokenizer, prompts, n=3, max_new_tokens=5, seed=3)
    assert [[s.ids for s in g] for g in first] == [[s.ids for s in g] for g in second]
    assert len(first) == 2 and all(len(g) == 3 for g in first)
    for group in first:
        for s in group:
            assert len(s.ids) <= 5 and tokenizer.eos_token_id not in s.ids
            assert s.ended == (len(s.ids) < 5)
            assert s.completion(tokenizer.eos_token_id)[-1:] == ([tokenizer.eos_token_id] if s.ended else s.ids[-1:])


def test_layer_trace_shapes_and_hooks(tokenizer, tiny_model):
    sequences = [p + c[0] for p, c in _groups(tokenizer)]
    outputs = block_outputs(tiny_model, sequences, tokenizer.pad_token_id)
    assert len(outputs) == 2 and outputs[0].shape == (sum(map(len, sequences)), 32)
    # the last block's output through the final norm is the backbone's last hidden state
    backbone = tiny_model.get_decoder()
    with torch.no_grad():
        last = backbone(input_ids=torch.tensor([sequences[0]])).last_hidden_state[0]
        assert torch.allclose(backbone.norm(outputs[-1][:len(sequences[0])]), last, atol=1e-5)
    trace = layer_trace(tiny_model, sequences, tokenizer.pad_token_id, max_positions=64)
    assert len(trace["contraction"]) == 2 and len(trace["transport"]) == 1
    assert 0.0 < trace["transport"][0] <= math.pi
    assert trace == layer_trace(tiny_model, sequences, tokenizer.pad_token_id, max_positions=64)
