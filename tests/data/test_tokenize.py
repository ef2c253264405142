import pytest

from dpokit.data import DataError, PreferencePair, UnpairedExample, tokenize_examples


def pair(prompt="Question: the cat\nAnswer:", chosen=" yes good", rejected=" no"):
    return PreferencePair(prompt, chosen, rejected, location="d.jsonl:1")


def test_prompt_and_completion_boundaries(tokenizer):
    [ex], report = tokenize_examples([pair()], tokenizer, max_length=64)
    prompt_ids = tokenizer("Question: the cat\nAnswer:")["input_ids"]
    assert ex.prompt_ids == prompt_ids and prompt_ids[0] == tokenizer.bos_token_id
    chosen = tokenizer(" yes good", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ex.completions[0] == chosen
    assert ex.completions[1][-1] == tokenizer.eos_token_id
    assert report.dropped == [] and report.completion_truncated == 0


def test_truncation_modes(tokenizer):
    long_prompt = "Question: " + "the cat sat on a mat " * 6 + "\nAnswer:"
    full = tokenizer(long_prompt)["input_ids"]
    [keep_end], _ = tokenize_examples([pair(long_prompt)], tokenizer, max_length=64, max_prompt_length=8)
    [keep_start], _ = tokenize_examples([pair(long_prompt)], tokenizer, max_length=64, max_prompt_length=8,
                                        truncation_mode="keep_start")
    assert keep_end.prompt_ids == full[-8:]
    assert keep_start.prompt_ids == full[:8]
    # completions are cut at the end to fit max_length
    [ex], report = tokenize_examples([pair(long_prompt, chosen=" yes " * 20)], tokenizer, max_length=len(full) + 3)
    assert all(len(ex.prompt_ids) + len(c) <= len(full) + 3 for c in ex.completions)
    assert report.completion_truncated == 1


def test_completion_truncated_away_is_reported_not_trained(tokenizer):
    long_prompt = "Question: " + "the cat sat on a mat " * 10
    examples = [pair(long_prompt), pair()]
    kept, report = tokenize_examples(examples, tokenizer, max_length=16)
    assert len(kept) == 1 and report.dropped == ["d.jsonl:1"]
    with pytest.raises(DataError, match="d.jsonl:1, field 'prompt'.*no room"):
        tokenize_examples(examples, tokenizer, max_length=16, on_empty_completion="error")


def test_chat_template_rendering(tokenizer):
    user = [{"role": "user", "content": "hi"}]
    example = PreferencePair(user, [{"role": "assistant", "content": "hello"}],
                             [{"role": "assistant", "content": "bye"}])
    [ex], _ = tokenize_examples([example], tokenizer, max_length=64)
    prompt_text = tokenizer.decode(ex.prompt_ids)
    assert prompt_text.endswith("<|assistant|>\n") or "assistant" in prompt_text
    assert "hello" in tokenizer.decode(ex.completions[0]) and "bye" in tokenizer.decode(ex.completions[1])
    # the completion is exactly what follows the prompt in the rendered conversation
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": "hello"}], tokenize=False)
    assert full.startswith(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True))


def test_chat_data_without_template_fails_clearly(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = PreferencePair([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "a"}],
                             [{"role": "assistant", "content": "b"}], location="c.jsonl:3")
    with pytest.raises(DataError, match="c.jsonl:3.*no chat template"):
        tokenize_examples([example], plain)


def test_unpaired_examples(tokenizer):
    [ex], _ = tokenize_examples([UnpairedExample("Q", " a", False)], tokenizer)
    assert len(ex.completions) == 1 and ex.label is False


def test_given_ids_are_checked_against_the_model_vocabulary_when_it_is_larger(tokenizer):
    """Models with padded vocabularies (embedding rows beyond the tokenizer) can sample those ids."""
    from dpokit.errors import DataError

    top = len(tokenizer)  # one past the tokenizer's last id
    pair = PreferencePair("p", " a", " b", {}, "round pair 0", prompt_ids=[5, 6], chosen_ids=[7, top],
                          rejected_ids=[8])
    with pytest.raises(DataError, match="round pair 0"):
        tokenize_examples([pair], tokenizer, max_length=32)
    examples, _ = tokenize_examples([pair], tokenizer, max_length=32, vocab_size=top + 8)
    assert examples[0].completions[0] == [7, top]
