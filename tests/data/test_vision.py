"""Vision records (TRL's vision format): images from paths, bytes and Parquet, placeholders, clear
errors naming the record and field, tokenization through the processor, virtual ids in batches."""

import json
import os

import pytest
import torch

from dpokit.data.vision import (IMAGE_MARK, VisionPair, collate_vision, load_vision_examples,
                                tokenize_vision_examples)
from dpokit.errors import DataError
from dpokit.tasks import colours
from dpokit.tiny import tiny_vlm_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)


def write(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


def colour_rows(folder, n=3, store="path"):
    items = colours.draw_items(n, seed=0)
    wrong = [("green" if c == "red" else "red") for c, _ in items]
    return colours.pair_records(items, wrong, str(folder), "t", store=store)


def test_paths_relative_to_the_data_file_and_parquet_bytes_give_the_same_pixels(tmp_path, processor):
    path_rows = colour_rows(tmp_path, store="path")
    from_paths = load_vision_examples(write(tmp_path / "pairs.jsonl", path_rows))
    parquet = colours.write_records(colour_rows(tmp_path, store="bytes"), str(tmp_path / "pairs.parquet"))
    from_parquet = load_vision_examples(parquet)
    assert len(from_paths) == len(from_parquet) == 3 and isinstance(from_paths[0], VisionPair)
    a, _ = tokenize_vision_examples(from_paths, processor)
    b, _ = tokenize_vision_examples(from_parquet, processor)
    for x, y in zip(a, b):
        assert x.prompt_ids == y.prompt_ids and x.completions == y.completions
        torch.testing.assert_close(x.pixel_values, y.pixel_values)
        assert x.pixel_values.shape == (1, 3, 16, 16)
        assert x.prompt_ids.count(x.image_token_id) == 16


def test_unreadable_and_missing_images_name_file_line_and_field(tmp_path):
    rows = colour_rows(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows[1]["images"] = ["broken.png"]
    with pytest.raises(DataError, match=r"pairs.jsonl:2, field 'images\[0\]': unreadable image broken.png"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    rows[1]["images"] = ["nowhere.png"]
    with pytest.raises(DataError, match=r"pairs.jsonl:2, field 'images\[0\]': image file not found: nowhere.png"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    rows[1]["images"] = [{"bytes": None, "path": None}]
    with pytest.raises(DataError, match=r"pairs.jsonl:2, field 'images\[0\]'"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    del rows[1]["images"]
    with pytest.raises(DataError, match=r"pairs.jsonl:2, field 'images': is missing"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))


def test_placeholder_count_must_match_the_images(tmp_path):
    rows = colour_rows(tmp_path)
    rows[2]["images"] = rows[2]["images"] * 2  # two images, one placeholder
    with pytest.raises(DataError, match=r"pairs.jsonl:3, field 'prompt': has 1 image placeholder\(s\) but 'images' "
                                        r"holds 2 image\(s\)"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    rows = colour_rows(tmp_path)
    rows[0]["chosen"] = [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "red"}]}]
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'chosen': holds an image placeholder"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    rows = colour_rows(tmp_path)
    rows[0]["prompt"][0]["content"].append({"type": "video"})
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'prompt': message 0 content block 2"):
        load_vision_examples(write(tmp_path / "pairs.jsonl", rows))


def test_a_prompt_without_placeholders_gets_them_before_the_first_user_text(tmp_path):
    rows = colour_rows(tmp_path, n=1)
    rows[0]["prompt"] = [{"role": "user", "content": "what colour"}]
    rows[0]["chosen"], rows[0]["rejected"] = "red", "blue"
    (example,) = load_vision_examples(write(tmp_path / "pairs.jsonl", rows))
    assert example.prompt == [{"role": "user", "content": IMAGE_MARK + "what colour"}]
    text_rows = [{"images": rows[0]["images"], "prompt": "what colour?", "chosen": " red", "rejected": " blue"}]
    (plain,) = load_vision_examples(write(tmp_path / "plain.jsonl", text_rows))
    assert plain.prompt == IMAGE_MARK + "what colour?"


def test_unpaired_records_split_pairs_and_keep_their_images(tmp_path, processor):
    examples = load_vision_examples(write(tmp_path / "pairs.jsonl", colour_rows(tmp_path, n=2)), kind="unpaired")
    assert [e.label for e in examples] == [True, False, True, False]
    assert all(len(e.images) == 1 for e in examples)
    tokenized, _ = tokenize_vision_examples(examples, processor)
    batch = collate_vision(tokenized, "unpaired")
    assert batch.labels.tolist() == [True, False, True, False] and batch.pixel_values.shape[0] == 4


def test_a_tokenizer_is_not_a_processor(tmp_path, processor):
    examples = load_vision_examples(write(tmp_path / "pairs.jsonl", colour_rows(tmp_path, n=1)))
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'images': the model's .* has no image processor"):
        tokenize_vision_examples(examples, processor.tokenizer)


def test_prompt_truncation_never_cuts_image_tokens(tmp_path, processor):
    examples = load_vision_examples(write(tmp_path / "pairs.jsonl", colour_rows(tmp_path, n=1)))
    with pytest.raises(DataError, match=r"pairs.jsonl:1, field 'prompt': max_prompt_length=10 would cut its image"):
        tokenize_vision_examples(examples, processor, max_prompt_length=10)


def test_collate_gives_each_image_token_of_the_batch_its_own_virtual_id(tmp_path, processor):
    examples = load_vision_examples(write(tmp_path / "pairs.jsonl", colour_rows(tmp_path, n=3)))
    tokenized, _ = tokenize_vision_examples(examples, processor)
    batch = collate_vision(tokenized)
    virtual = [t for prompt, _ in batch.groups for t in prompt if t < 0]
    assert virtual == [-(k + 1) for k in range(48)]  # 3 images x 16 tokens, in order
    assert batch.groups.pixel_values is batch.pixel_values and batch.pixel_values.shape[0] == 3
    assert all(t >= 0 for _, cs in batch.groups for c in cs for t in c)
