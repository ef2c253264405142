"""`model.kind: vlm` with the cached reference (``reference.precompute``) and ranked lists
(listwise losses on K answers to one image prompt): the scorer on lists (prompt-shared equals
padded), the cache keyed by the images too, and a run that reuses its cache."""

import copy
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from dpokit.losses import get_loss
from dpokit.reference import CachedReference, ModelReference, fingerprint_examples
from dpokit.scoring.vlm import VisionLogProbEngine
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_vlm_processor
from dpokit.train import Trainer


@pytest.fixture(scope="module")
def processor():
    return tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory, processor):
    path = tmp_path_factory.mktemp("tiny-llava")
    tiny_llava(processor, hidden_size=32, seed=0).save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return str(path)


def list_batch(processor, folder, n=3, seed=0):
    rows = colours.list_records(colours.draw_items(n, seed), str(folder), "l")
    examples = [e for i, r in enumerate(rows) for e in parse_vision_record(f"r:{i}", r, "lists", str(folder))]
    tokenized, _ = tokenize_vision_examples(examples, processor)
    return tokenized, collate_vision(tokenized, "lists")


def test_list_records_parse_with_their_images_and_scores(processor, tmp_path):
    tokenized, batch = list_batch(processor, tmp_path)
    assert batch.kind == "lists" and batch.pixel_values.shape[0] == 3
    assert all(len(ex.completions) == 4 for ex in tokenized)
    assert batch.scores.shape == (3, 4)
    assert batch.scores[0].argmax().item() == list(colours.COLOURS).index(colours.draw_items(3, 0)[0][0])


@pytest.mark.parametrize("name", ["plackett_luce", "lipo_lambda"])
def test_listwise_losses_run_on_images_and_prompt_shared_equals_padded(processor, tmp_path, name):
    model = tiny_llava(processor, hidden_size=32, seed=1).double().eval()
    reference = ModelReference(copy.deepcopy(model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    _, batch = list_batch(processor, tmp_path)
    loss_fn = get_loss(name)
    values = {}
    for layout in ("padded", "prompt_shared"):
        model.zero_grad()
        loss = loss_fn(VisionLogProbEngine(loss_fn.needs, 0, layout).loss_inputs(model, batch, reference)).loss.mean()
        loss.backward()
        values[layout] = (loss.detach(), model.model.multi_modal_projector.linear_1.weight.grad.clone())
    assert torch.isfinite(values["padded"][0]) and values["padded"][1].abs().max() > 0
    torch.testing.assert_close(values["prompt_shared"][0], values["padded"][0], atol=1e-9, rtol=1e-9)
    expected = values["padded"][1]  # SDPA's backward with a branch mask: relative to the largest entry
    assert (values["prompt_shared"][1] - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_the_cache_equals_the_reference_model_and_hashes_the_images(processor, tmp_path):
    model = tiny_llava(processor, hidden_size=32, seed=1).eval()
    tokenized, batch = list_batch(processor, tmp_path)
    engine = VisionLogProbEngine(get_loss("plackett_luce").needs, 0, "prompt_shared")
    inner = ModelReference(model)
    cached = CachedReference.build(inner, engine, tokenized, str(tmp_path / "cache"), batch_size=2)
    with torch.no_grad():
        direct = inner.token_logprobs(engine, batch)
    got = cached.token_logprobs(engine, batch)
    torch.testing.assert_close(got.token_logps[got.mask], direct.token_logps[direct.mask].float())
    other = copy.deepcopy(tokenized)
    other[0].pixel_values = other[0].pixel_values.flip(-1)  # the same text, another image
    assert fingerprint_examples(other) != fingerprint_examples(tokenized)


def run_config(model_dir, data, out, cache, loss="plackett_luce"):
    return from_dict({
        "model": {"name_or_path": model_dir, "kind": "vlm"},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": data, "kind": "lists", "max_length": 64},
        "loss": {"name": loss},
        "reference": {"precompute": True, "cache_dir": str(cache)},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 4, "lr": 1e-2, "layout": "prompt_shared",
                  "report_to": [], "progress_bar": False, "mixed_precision": "no", "warmup_steps": 0},
    })


@pytest.mark.slow
def test_a_listwise_vlm_run_with_a_cached_reference_trains_and_reuses_its_cache(vlm_dir, tmp_path):
    rows = colours.list_records(colours.draw_items(8, 0), str(tmp_path), "l")
    data = colours.write_records(rows, str(tmp_path / "lists.jsonl"))
    first = Trainer(run_config(vlm_dir, data, tmp_path / "a", tmp_path / "cache"))
    assert isinstance(first.reference, CachedReference) and not first.reference.hit
    assert first.fit()["status"] == "completed"
    second = Trainer(run_config(vlm_dir, data, tmp_path / "b", tmp_path / "cache", loss="lipo_lambda"))
    assert second.reference.hit and second.fit()["status"] == "completed"
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".safetensors")]) == 1
