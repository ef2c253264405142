"""The vision-language scorer on a tiny Llava: against the model's own forward, every layout against
``padded`` (log-probs and parameter gradients), one image encoding per pair, the registered losses."""

import copy
import random

import pytest
import torch

from dpokit.data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from dpokit.errors import ConfigError
from dpokit.losses import get_loss, list_losses
from dpokit.reference import ModelReference
from dpokit.scoring.vlm import VisionLogProbEngine, check_vision_model
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_vlm_processor

LOGP_TOL = 1e-9  # float64, sdpa: measured 0.0 (padded vs packed / prompt_shared)
GRAD_REL = 1e-5  # per parameter, relative to its largest entry: measured <= 1e-7 (sdpa float64 backward)
ANSWERS = ["red", "green blue", "yellow yellow red", "blue", "green"]


@pytest.fixture(scope="module")
def processor():
    return tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)


@pytest.fixture(scope="module")
def model(processor):
    model = tiny_llava(processor, hidden_size=32, seed=1).double()
    model.eval()
    return model


def records(n, seed=0):
    rng = random.Random(seed)
    items = colours.draw_items(n, seed)
    out = []
    for i, (colour, image) in enumerate(items):
        prompt = colours.prompt_messages()
        if i % 2:  # a longer prompt on every other record, so the rows differ in length
            prompt = prompt + [{"role": "assistant", "content": "red"}, {"role": "user", "content": "what colour"}]
        out.append({"images": [image], "prompt": prompt, "chosen": colours.answer_messages(ANSWERS[i % 5]),
                    "rejected": colours.answer_messages(rng.choice(ANSWERS))})
    for row in out:
        if row["chosen"] == row["rejected"]:
            row["rejected"] = colours.answer_messages("the square")
    return out


def batch_of(processor, kind="pairs", n=4):
    examples = [e for i, r in enumerate(records(n)) for e in parse_vision_record(f"r:{i}", r, kind, ".")]
    tokenized, _ = tokenize_vision_examples(examples, processor)
    return collate_vision(tokenized, kind)


def naive_sums(model, processor, batch_rows):
    """Summed completion log-probs from the model's own forward (input_ids with image tokens + pixels)."""
    sums = []
    for ex in batch_rows:
        for completion in ex.completions:
            ids = torch.tensor([ex.prompt_ids + completion])
            logp = model(input_ids=ids, pixel_values=ex.pixel_values.double()).logits.log_softmax(-1)[0]
            p = len(ex.prompt_ids)
            sums.append(sum(logp[p - 1 + j, t] for j, t in enumerate(completion)))
    return torch.stack(sums)


def test_padded_scorer_equals_the_models_own_forward(model, processor):
    examples = [e for i, r in enumerate(records(3)) for e in parse_vision_record(f"r:{i}", r, "pairs", ".")]
    tokenized, _ = tokenize_vision_examples(examples, processor)
    assert tokenized[0].prompt_ids.count(tokenized[0].image_token_id) == 16  # (16 / 4) ** 2 patches
    engine = VisionLogProbEngine(get_loss("dpo").needs, processor.tokenizer.pad_token_id, "padded")
    with torch.no_grad():
        got = engine.token_logprobs(model, collate_vision(tokenized).groups).sums
        expected = naive_sums(model, processor, tokenized)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def _logps_and_grads(model, batch, layout):
    engine = VisionLogProbEngine(get_loss("dpo").needs, 0, layout)
    model.zero_grad()
    sums = engine.token_logprobs(model, batch.groups).sums
    weights = torch.linspace(-1.0, 1.5, sums.numel(), dtype=sums.dtype)
    (weights * sums).sum().backward()
    return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["packed", "prompt_shared"])
def test_layouts_equal_padded_in_logps_and_gradients(model, processor, layout):
    batch = batch_of(processor)
    expected, expected_grads = _logps_and_grads(model, batch, "padded")
    got, grads = _logps_and_grads(model, batch, layout)
    torch.testing.assert_close(got, expected, atol=LOGP_TOL, rtol=LOGP_TOL)
    assert grads.keys() == expected_grads.keys()
    assert any("vision_tower" in n for n in grads) and any("multi_modal_projector" in n for n in grads)
    worst = 0.0
    for name, grad in expected_grads.items():
        # the key-bias gradient is zero in exact arithmetic (softmax shift invariance): floor the scale
        scale = grad.abs().max().clamp(min=1e-12)
        worst = max(worst, float((grads[name] - grad).abs().max() / scale))
        assert (grads[name] - grad).abs().max() <= GRAD_REL * scale, name
    print(f"{layout}: max |logp - padded| {float((got - expected).abs().max()):.1e}, "
          f"max relative gradient error {worst:.1e}")


@pytest.mark.parametrize("layout", ["padded", "prompt_shared"])
def test_each_image_is_encoded_once_per_pair(model, processor, layout):
    batch = batch_of(processor, n=3)
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            VisionLogProbEngine(get_loss("dpo").needs, 0, layout).token_logprobs(model, batch.groups)
    finally:
        handle.remove()
    assert calls == [3]  # one vision pass, one row per image (not one per chosen and rejected row)


def test_prompt_shared_runs_fewer_positions_than_padded(processor):
    from dpokit.scoring.lm.layouts import build_packed_batch

    groups = batch_of(processor).groups
    shared = build_packed_batch(groups, 0, share_prompt=True, device="cpu")
    rows = [(p, c) for p, cs in groups for c in cs]
    padded_positions = len(rows) * max(len(p) + len(c) for p, c in rows)
    assert shared.num_positions < 0.6 * padded_positions  # the image tokens run once per pair


PAIRWISE = sorted(s.name for s in list_losses() if s.needs.data == "pairs" and not s.needs.extras
                  and not s.needs.prompt_logps)
UNPAIRED = sorted(s.name for s in list_losses() if s.needs.data == "unpaired" and not s.needs.extras)


FAST = ("dpo", "kto")  # the everyday loop runs these two; the full sweep (~30 losses) is slow
SWEEP = [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in PAIRWISE + UNPAIRED]


@pytest.mark.parametrize("name", SWEEP)
def test_every_registered_loss_runs_and_prompt_shared_equals_padded(model, processor, name):
    loss_fn = get_loss(name)
    kind = loss_fn.needs.data
    batch = batch_of(processor, kind)
    reference = ModelReference(copy.deepcopy(model).requires_grad_(False)) if loss_fn.needs.reference else None
    with torch.no_grad():  # a reference that differs from the policy
        for p in (reference.model.parameters() if reference else []):
            p.add_(0.01 * torch.randn_like(p))
    values = {}
    for layout in ("padded", "prompt_shared"):
        engine = VisionLogProbEngine(loss_fn.needs, 0, layout)
        model.zero_grad()
        loss = loss_fn(engine.loss_inputs(model, batch, reference)).loss.mean()
        loss.backward()
        grad = model.model.multi_modal_projector.linear_1.weight.grad.clone()
        values[layout] = (loss.detach(), grad)
    assert torch.isfinite(values["padded"][0])
    torch.testing.assert_close(values["prompt_shared"][0], values["padded"][0], atol=1e-9, rtol=1e-9)
    expected = values["padded"][1]
    assert (values["prompt_shared"][1] - expected).abs().max() <= GRAD_REL * expected.abs().max()


def test_a_placeholder_without_its_image_is_refused(model, processor):
    batch = batch_of(processor, n=2)
    groups = type(batch.groups)(batch.groups[:1])
    groups.pixel_values = batch.pixel_values[:1]
    prompt, completions = groups[0]
    groups[0] = (prompt + [-17], completions)  # one image token too many
    with pytest.raises(ValueError, match="placeholders and images do not match"):
        VisionLogProbEngine(get_loss("dpo").needs, 0).token_logprobs(model, groups)
    groups[0] = ([t for t in prompt if t >= 0], completions)  # an image without its placeholders
    with pytest.raises(ValueError, match="0 distinct image token.* 16 feature rows"):
        VisionLogProbEngine(get_loss("dpo").needs, 0).token_logprobs(model, groups)


def test_unsupported_families_are_refused_with_the_reason(model):
    other = copy.deepcopy(model)
    other.config.model_type = "qwen3_vl"
    with pytest.raises(ConfigError, match="multimodal rotary positions"):
        check_vision_model(other)
    with pytest.raises(ConfigError, match="prompt's own log-probs"):
        VisionLogProbEngine(get_loss("orpo").needs if get_loss("orpo").needs.prompt_logps
                            else type(get_loss("dpo").needs)(prompt_logps=True), 0)


def test_tiny_llava_round_trips_through_the_auto_classes(processor, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = tiny_llava(processor, hidden_size=32, seed=2).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = AutoModelForImageTextToText.from_pretrained(tmp_path).eval(), AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded_processor.image_token == "<image>"
    text = loaded_processor.apply_chat_template(colours.prompt_messages(), add_generation_prompt=True, tokenize=False)
    inputs = loaded_processor(images=[colours.draw("blue", random.Random(0))], text=[text], add_special_tokens=False,
                              return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
