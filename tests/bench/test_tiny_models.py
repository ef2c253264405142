"""The benchmark's model shapes: Llama or Qwen2, grouped-query attention, a padded vocabulary."""

import pytest

from dpokit.tiny import tiny_llama


def test_qwen2_has_qkv_biases_and_grouped_query_attention():
    model = tiny_llama(100, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, arch="qwen2")
    attention = model.model.layers[0].self_attn
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert attention.q_proj.bias is not None and attention.k_proj.bias is not None and attention.v_proj.bias is not None
    assert attention.o_proj.bias is None
    assert tuple(attention.q_proj.weight.shape) == (32, 32) and tuple(attention.k_proj.weight.shape) == (16, 32)
    assert model.config.layer_types == ["full_attention"]


def test_llama_default_has_no_biases_and_one_kv_head_per_head():
    model = tiny_llama(100, hidden_size=32, num_layers=1, num_heads=4)
    attention = model.model.layers[0].self_attn
    assert type(model).__name__ == "LlamaForCausalLM" and attention.q_proj.bias is None
    assert tuple(attention.k_proj.weight.shape) == (32, 32)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b = (tiny_llama(50, 16, 1, 2, arch="qwen2", seed=s) for s in (3, 3))
    c = tiny_llama(50, 16, 1, 2, arch="qwen2", seed=4)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
    assert not (a.lm_head.weight == c.lm_head.weight).all()


def test_the_model_vocabulary_may_exceed_the_tokenizer_but_not_fall_short():
    from dpokit.tiny import train_tokenizer

    tokenizer = train_tokenizer(["a b c d e f g"] * 4, vocab_size=300)
    model = tiny_llama(1000, 16, 1, 2, tokenizer=tokenizer)
    assert model.lm_head.weight.shape[0] == 1000 and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        tiny_llama(len(tokenizer) - 1, 16, 1, 2, tokenizer=tokenizer)


@pytest.mark.parametrize("kwargs, message", [({"arch": "mamba"}, "unknown architecture 'mamba'"),
                                             ({"num_heads": 4, "num_kv_heads": 3}, "multiple of")])
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_llama(50, 16, 1, **kwargs)
