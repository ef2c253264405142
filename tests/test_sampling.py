"""The sampler interface (dpokit.sampling): seeded sampling, greedy decoding, and the vLLM backend's absence."""

import pytest

from dpokit.sampling import HFSampler, Sampler, SamplingConfig, VLLMSampler, make_sampler


def test_sampler_interface(policy_dir, word_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    sampler = make_sampler("hf", model, word_tokenizer, SamplingConfig(max_new_tokens=4, batch_size=2, seed=3))
    assert isinstance(sampler, Sampler)
    texts, ids = sampler.sample(["q a e :", "q b f :", "q c g :"], 3)
    assert len(texts) == 3 and all(len(group) == 3 for group in texts)
    assert all(len(row) <= 4 and word_tokenizer.eos_token_id not in row for group in ids for row in group)
    assert sampler.sample(["q a e :", "q b f :", "q c g :"], 3)[0] == texts  # seeded
    greedy = HFSampler(model, word_tokenizer, SamplingConfig(max_new_tokens=4, temperature=0.0))
    first = greedy.sample(["q a e :"], 2)[0][0]
    assert first[0] == first[1]
    try:
        import vllm  # noqa: F401  (only its absence is tested)
    except ImportError:
        with pytest.raises(RuntimeError, match="vllm"):
            VLLMSampler(policy_dir, word_tokenizer)
