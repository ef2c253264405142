"""CA-DPO pairs from (image, caption) data: conflict and consistent scenarios, evidence vs shortcut paths."""

import pytest
import torch

from dpokit.data.conflict import answer_label, ca_dpo_pairs, evidence_answer, sft_records, shortcut_answer
from dpokit.data.vision import collate_vision, load_vision_examples, tokenize_vision_examples
from dpokit.losses import get_loss
from dpokit.reference import ModelReference
from dpokit.scoring.vlm import VisionLogProbEngine
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_vlm_processor

CAPTIONS = {"red": "a red square", "green": "a green square", "blue": "a blue square", "yellow": "a yellow square"}


def image_captions(n=8):
    return [(image, CAPTIONS[colour]) for colour, image in colours.draw_items(n, seed=0)]


def test_conflict_pairs_hold_the_evidence_path_over_the_text_shortcut():
    records = image_captions()
    pairs = ca_dpo_pairs(records, seed=1)
    assert len(pairs) == len(records) and {p["split"] for p in pairs} == {"conflict"}
    for (image, caption), pair in zip(records, pairs):
        shown = pair["prompt"][0]["content"][1]["text"].split("caption: ")[1].split(".")[0]
        assert shown != caption and pair["images"] == [image]
        assert pair["chosen"][0]["content"] == f"image: {caption}; caption: {shown}; conflict; no"
        assert pair["rejected"][0]["content"] == f"caption: {shown}; yes"
        assert answer_label(pair["chosen"][0]["content"]) == "no" and answer_label(pair["rejected"][0]["content"]) == "yes"
    both = ca_dpo_pairs(records, seed=1, consistent_fraction=1.0)
    consistent = [p for p in both if p["split"] == "consistent"]
    assert len(consistent) == len(records)
    assert all(answer_label(p["chosen"][0]["content"]) == answer_label(p["rejected"][0]["content"]) == "yes"
               for p in consistent)  # same label; the rejected path skips the image evidence
    assert ca_dpo_pairs(records, seed=1) == ca_dpo_pairs(records, seed=1)


def test_answers_and_refusals():
    assert evidence_answer("a cat", "a cat") == "image: a cat; caption: a cat; consistent; yes"
    assert shortcut_answer("a dog") == "caption: a dog; yes"
    with pytest.raises(ValueError, match="two distinct captions"):
        ca_dpo_pairs([(None, "same"), (None, "same")])
    with pytest.raises(ValueError, match="consistent_fraction"):
        ca_dpo_pairs(image_captions(2), consistent_fraction=2.0)
    sft = sft_records(image_captions(), seed=0, conflict_fraction=0.5)
    assert {r["split"] for r in sft} == {"conflict", "consistent"}


def test_ca_dpo_pairs_train_through_the_vlm_scorer_from_a_dataset():
    from datasets import Dataset

    texts = colours.vocabulary_corpus() + [" ".join(CAPTIONS.values()) + " image caption conflict consistent yes no "
                                           "does the match"]
    processor = tiny_vlm_processor(texts, vocab_size=80, word_level=True)
    rows = ca_dpo_pairs(image_captions(4), seed=0)
    for row in rows:
        del row["split"]
    examples = load_vision_examples(Dataset.from_list(rows))  # PIL images from a datasets.Dataset
    tokenized, _ = tokenize_vision_examples(examples, processor)
    batch = collate_vision(tokenized)
    model = tiny_llava(processor, hidden_size=32)
    loss_fn = get_loss("dpo", beta=0.1)
    loss = loss_fn(VisionLogProbEngine(loss_fn.needs, 0, "prompt_shared").loss_inputs(
        model, batch, ModelReference(tiny_llava(processor, hidden_size=32, seed=3)))).loss.mean()
    loss.backward()
    assert torch.isfinite(loss) and model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
