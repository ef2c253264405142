"""CachedReference: computed once, reused across epochs and runs, invalidated by any change of
reference weights, model config, data or tokenization."""

import copy
import logging
import os

import pytest
import torch

from dpokit.data import PreferencePair, collate, tokenize_examples
from dpokit.data.tokenize import TokenizedExample
from dpokit.scoring.lm.engine import LogProbEngine
from dpokit.losses import Needs
from dpokit.reference import CachedReference, ModelReference

from conftest import make_pairs


def examples_for(tokenizer, n=10, seed=0, max_length=64):
    rows = make_pairs(n, seed=seed)
    tokenized, _ = tokenize_examples([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows],
                                     tokenizer, max_length=max_length)
    return tokenized


def model_for(tokenizer, seed=0):
    from dpokit.tiny import tiny_llama

    return tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=seed)


class CountingReference(ModelReference):
    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def token_logprobs(self, engine, batch, cache=True):
        self.calls += 1
        return super().token_logprobs(engine, batch, cache)


@pytest.fixture
def setup(tokenizer, tmp_path):
    engine = LogProbEngine(Needs(), tokenizer.pad_token_id, "padded")
    return engine, examples_for(tokenizer), model_for(tokenizer), str(tmp_path / "cache")


def build(model, engine, examples, cache_dir, batch_size=4):
    inner = CountingReference(model)
    cached = CachedReference.build(inner, engine, examples, cache_dir, batch_size)
    return cached, inner.calls


def test_cached_values_equal_the_live_reference(setup):
    engine, examples, model, cache_dir = setup
    cached, calls = build(model, engine, examples, cache_dir)
    assert not cached.hit and calls == 3 and os.path.exists(cached.path)
    live = ModelReference(model)
    for start in (0, 3, 7):
        batch = collate(examples[start:start + 3])
        got, want = cached.token_logprobs(engine, batch), live.token_logprobs(engine, batch)
        assert torch.equal(got.mask, want.mask)
        torch.testing.assert_close(got.token_logps, want.token_logps, atol=1e-6, rtol=1e-6)


def test_second_run_reads_the_cache_without_the_model(setup):
    engine, examples, model, cache_dir = setup
    first, _ = build(model, engine, examples, cache_dir)
    second, calls = build(copy.deepcopy(model), engine, examples, cache_dir)  # a new run: same weights, new objects
    assert second.hit and calls == 0 and second.path == first.path
    for key in first.store:
        for a, b in zip(first.store[key], second.store[key]):
            assert torch.equal(a, b)


def test_epochs_reuse_the_store(setup):
    engine, examples, model, cache_dir = setup
    cached, _ = build(model, engine, examples, cache_dir)
    batch = collate(examples[2:6])
    epoch1 = cached.token_logprobs(engine, batch)
    epoch2 = cached.token_logprobs(engine, batch)
    assert torch.equal(epoch1.token_logps, epoch2.token_logps)
    with pytest.raises(ValueError, match="dataset's own completions"):
        cached.token_logprobs(engine, batch, cache=False)


def _key(model, examples):
    return CachedReference.cache_key(model, examples)


def test_invalidation_on_weights_config_data_and_tokenization(setup, tokenizer):
    engine, examples, model, cache_dir = setup
    cached, _ = build(model, engine, examples, cache_dir)
    key = _key(model, examples)
    assert os.path.basename(cached.path) == f"reference-{key}.safetensors"
    assert _key(copy.deepcopy(model), examples) == key  # same content, same key

    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert _key(nudged, examples) != key

    reconfigured = copy.deepcopy(model)
    reconfigured.config.rms_norm_eps = 1e-3  # same weights, different forward pass
    assert _key(reconfigured, examples) != key

    renamed = copy.deepcopy(model)
    renamed.config._name_or_path = "elsewhere"  # cosmetic: same key
    assert _key(renamed, examples) == key

    other_data = examples_for(tokenizer, seed=5)
    assert _key(model, other_data) != key
    assert _key(model, examples[:-1]) != key

    truncated = examples_for(tokenizer, max_length=12)  # same records, different tokenization
    assert [e.completions for e in truncated] != [e.completions for e in examples]
    assert _key(model, truncated) != key
    one_token = [TokenizedExample(e.index, list(e.prompt_ids), [list(c) for c in e.completions]) for e in examples]
    one_token[4].completions[1][0] += 1
    assert _key(model, one_token) != key

    # a changed key recomputes, the old cache file stays valid for its own key
    rebuilt, calls = build(nudged, engine, examples, cache_dir)
    assert not rebuilt.hit and calls > 0 and rebuilt.path != cached.path
    assert build(model, engine, examples, cache_dir)[0].hit


def test_damaged_cache_is_recomputed(setup, caplog):
    engine, examples, model, cache_dir = setup
    cached, _ = build(model, engine, examples, cache_dir)
    with open(cached.path, "wb") as handle:
        handle.write(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="dpokit.reference"):
        again, calls = build(model, engine, examples, cache_dir)
    assert not again.hit and calls > 0 and "unreadable" in caplog.text
    assert build(model, engine, examples, cache_dir)[0].hit


def test_k_completion_groups_and_layout_independence(tokenizer, tmp_path):
    model = model_for(tokenizer)
    base = examples_for(tokenizer, n=6, seed=2)
    # groups with 1, 2 and 3 completions
    examples = [TokenizedExample(i, e.prompt_ids, (e.completions * 2)[: 1 + i % 3]) for i, e in enumerate(base)]
    padded = LogProbEngine(Needs(), tokenizer.pad_token_id, "padded")
    shared = LogProbEngine(Needs(), tokenizer.pad_token_id, "prompt_shared")
    a, _ = build(model, padded, examples, str(tmp_path / "a"), batch_size=4)
    b, _ = build(model, shared, examples, str(tmp_path / "b"), batch_size=4)
    assert os.path.basename(a.path) == os.path.basename(b.path)  # the layout is not part of the key
    for ex in examples:
        assert len(a.store[ex.index]) == len(ex.completions)
        for x, y, completion in zip(a.store[ex.index], b.store[ex.index], ex.completions):
            assert x.shape == (len(completion),)
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    reread, calls = build(model, padded, examples, str(tmp_path / "a"))
    assert reread.hit and calls == 0
    assert [len(reread.store[e.index]) for e in examples] == [len(e.completions) for e in examples]


def test_lora_adapter_weights_do_not_change_the_key_of_an_adapter_disabled_reference(tokenizer):
    peft = pytest.importorskip("peft")
    model = model_for(tokenizer)
    keys = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # different random adapter initialisations
        wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
        keys.append(CachedReference.cache_key(wrapped, examples_for(tokenizer), adapters_disabled=True))
    assert keys[0] == keys[1]
