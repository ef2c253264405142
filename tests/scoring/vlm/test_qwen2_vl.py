"""The vision-language scorer on a tiny Qwen2-VL (multimodal rotary positions, flattened patches,
``image_grid_thw``): its 3D positions against ``get_rope_index``, the padded scorer against the
model's own forward, every layout against ``padded`` (log-probs and gradients), the saved model and
processor loaded back."""

import random

import pytest
import torch

from dpokit.data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from dpokit.losses import get_loss
from dpokit.scoring.vlm import VisionLogProbEngine, check_vision_model
from dpokit.scoring.vlm.positions import rope_positions
from dpokit.tasks import colours
from dpokit.tiny import tiny_qwen2_vl, tiny_qwen2_vl_processor

from .test_engine import _logps_and_grads

GRAD_REL = 1e-5
ANSWERS = ["red", "green blue", "yellow yellow red", "blue", "green"]


@pytest.fixture(scope="module")
def processor():
    return tiny_qwen2_vl_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)


@pytest.fixture(scope="module")
def model(processor):
    model = tiny_qwen2_vl(processor, seed=1).double()
    model.eval()
    return model


def records():
    """Rows of different lengths: one image (16 x 16), a wide image (16 x 32: a 2 x 4 grid), two images."""
    items = colours.draw_items(4, seed=0)
    wide = colours.draw("blue", random.Random(5)).resize((32, 16))
    text = {"type": "text", "text": colours.QUESTION}
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, text]}],
        [{"role": "user", "content": [{"type": "image"}, text]}, {"role": "assistant", "content": "red"},
         {"role": "user", "content": "what colour"}],
        [{"role": "user", "content": [{"type": "image"}, text, {"type": "image"}]}],
        [{"role": "user", "content": [text, {"type": "image"}]}],
    ]
    images = [[items[0][1]], [wide], [items[1][1], items[2][1]], [items[3][1]]]
    return [{"images": images[i], "prompt": prompts[i], "chosen": colours.answer_messages(ANSWERS[i]),
             "rejected": colours.answer_messages(ANSWERS[(i + 2) % 5])} for i in range(4)]


def tokenized(processor):
    examples = [e for i, r in enumerate(records()) for e in parse_vision_record(f"r:{i}", r, "pairs", ".")]
    return tokenize_vision_examples(examples, processor)[0]


def test_grids_and_image_tokens(processor):
    rows = tokenized(processor)
    assert [ex.image_grid_thw.tolist() for ex in rows] == [[[1, 8, 8]], [[1, 8, 16]], [[1, 8, 8], [1, 8, 8]],
                                                           [[1, 8, 8]]]
    image = processor.image_token_id
    assert [ex.prompt_ids.count(image) for ex in rows] == [16, 32, 32, 16]  # grid / merge ** 2


def test_positions_equal_get_rope_index(model, processor):
    rows = tokenized(processor)
    batch = collate_vision(rows)
    width = max(len(p) for p, _ in batch.groups)
    virtual = torch.zeros(len(rows), width, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, ((prompt, _), ex) in enumerate(zip(batch.groups, rows)):
        virtual[r, :len(prompt)] = torch.tensor(prompt)
        real[r, :len(prompt)] = torch.tensor(ex.prompt_ids)
        mask[r, :len(prompt)] = 1
    expected, _ = model.model.get_rope_index(real, (real == processor.image_token_id).int(),
                                            image_grid_thw=batch.image_grid_thw, attention_mask=mask)
    got = rope_positions(model, batch.image_grid_thw)(virtual, None)
    assert bool((got[:, mask.bool()] == expected[:, mask.bool()]).all())
    assert int((got[1] != got[2]).sum()) > 0  # the height and width positions differ inside the images


def test_padded_scorer_equals_the_models_own_forward(model, processor):
    rows = tokenized(processor)
    engine = VisionLogProbEngine(get_loss("dpo").needs, processor.tokenizer.pad_token_id, "padded")
    with torch.no_grad():
        got = engine.token_logprobs(model, collate_vision(rows).groups).sums
        expected = []
        for ex in rows:
            for completion in ex.completions:
                ids = torch.tensor([ex.prompt_ids + completion])
                logits = model(input_ids=ids, pixel_values=ex.pixel_values.double(), image_grid_thw=ex.image_grid_thw,
                               mm_token_type_ids=(ids == processor.image_token_id).int()).logits
                logp = logits.log_softmax(-1)[0]
                p = len(ex.prompt_ids)
                expected.append(sum(logp[p - 1 + j, t] for j, t in enumerate(completion)))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("layout", ["packed", "prompt_shared"])
def test_layouts_equal_padded_in_logps_and_gradients(model, processor, layout):
    batch = collate_vision(tokenized(processor))
    expected, expected_grads = _logps_and_grads(model, batch, "padded")
    got, grads = _logps_and_grads(model, batch, layout)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    assert grads.keys() == expected_grads.keys() and any(n.startswith("model.visual") for n in grads)
    for name, grad in expected_grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (grads[name] - grad).abs().max() <= GRAD_REL * scale, name


def test_qwen2_vl_passes_the_scorer_and_layout_checks(model):
    check_vision_model(model)  # qwen2_vl is supported, no longer refused
    from dpokit.scoring.lm.layouts import check_layout

    check_layout(model, "prompt_shared")


def test_saved_model_and_processor_load_back(processor, tmp_path):
    from transformers import AutoModelForImageTextToText

    from dpokit.models import load_processor

    model = tiny_qwen2_vl(processor, seed=2).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = load_processor(str(tmp_path))
    assert type(loaded) is type(model) and loaded_processor.image_token == "<|image_pad|>"
    text = loaded_processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    inputs = loaded_processor(images=[colours.draw("blue", random.Random(0))], text=[text], add_special_tokens=False,
                              return_tensors="pt")
    assert inputs["pixel_values"].shape == (64, 3 * 2 * 2) and inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_qwen2_5_vl_prompt_shared_equals_padded(processor):
    model = tiny_qwen2_vl(processor, seed=3, arch="qwen2_5_vl").double().eval()
    batch = collate_vision(tokenized(processor))
    expected, expected_grads = _logps_and_grads(model, batch, "padded")
    got, grads = _logps_and_grads(model, batch, "prompt_shared")
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    for name, grad in expected_grads.items():
        assert (grads[name] - grad).abs().max() <= GRAD_REL * grad.abs().max().clamp(min=1e-12), name


@pytest.mark.parametrize("share_prompt", [False, True])
def test_positions_of_sequences_packed_in_one_row(model, processor, share_prompt):
    """Several sequences per row (positions restart at 0 per sequence): each keeps its own 3D positions."""
    from dpokit.scoring.lm.layouts import build_packed_batch

    rows = tokenized(processor)
    batch = collate_vision(rows)
    packed = build_packed_batch(batch.groups, 0, share_prompt=share_prompt, device="cpu", capacity=None)
    got = rope_positions(model, batch.image_grid_thw)(packed.input_ids, packed.position_ids)[:, 0]
    expected = []
    for ex in rows:
        for c, completion in enumerate(ex.completions):
            ids = torch.tensor([ex.prompt_ids + completion])
            full, _ = model.model.get_rope_index(ids, (ids == processor.image_token_id).int(),
                                                image_grid_thw=ex.image_grid_thw)
            keep = len(ex.prompt_ids) if share_prompt and c else 0  # prompt-shared: the prompt once per group
            expected.append(full[:, 0, keep:])
    expected = torch.cat(expected, dim=1)
    assert packed.input_ids.shape[0] == 1 and bool((got[:, :expected.shape[1]] == expected).all())


def test_the_grid_processor_refuses_image_and_token_counts_that_differ(processor):
    image = colours.draw("red", random.Random(0))
    text = processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    with pytest.raises(ValueError, match="more images than image tokens"):
        processor(images=[image, image], text=[text], add_special_tokens=False)
    with pytest.raises(ValueError, match="more image tokens than there are images"):
        processor(images=[image], text=[text + processor.image_token], add_special_tokens=False)
    inputs = processor(images=[image], text=[text], add_special_tokens=False)
    assert int(inputs["mm_token_type_ids"].sum()) == 16 == int((inputs["input_ids"] == processor.image_token_id).sum())
