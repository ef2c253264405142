"""First-step DPO loss and gradients of a tiny Llava and a tiny Qwen2-VL: dpokit's vlm scorer (prompt-shared, one image
encoding per pair) against TRL's DPOTrainer (its vision collator, chosen and rejected rows each with
the image) on the same model, reference and records."""

import tempfile

import pytest
import torch

from dpokit.data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from dpokit.losses import get_loss
from dpokit.reference import ModelReference
from dpokit.scoring.vlm import VisionLogProbEngine
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_qwen2_vl, tiny_qwen2_vl_processor, tiny_vlm_processor

BETA = 0.1


def records():
    items = colours.draw_items(4, seed=0)
    return [{"images": [image], "prompt": colours.prompt_messages(), "chosen": colours.answer_messages(colour),
             "rejected": colours.answer_messages("green" if colour != "green" else "red yellow")}
            for colour, image in items]


def llava():
    processor = tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    build = lambda seed: tiny_llava(processor, hidden_size=32, seed=seed)  # noqa: E731
    return processor, build, lambda m: m.model.multi_modal_projector.linear_1.weight.grad.clone(), 8


def qwen2_vl():
    processor = tiny_qwen2_vl_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)
    build = lambda seed: tiny_qwen2_vl(processor, seed=seed)  # noqa: E731
    return processor, build, lambda m: m.model.visual.merger.mlp[0].weight.grad.clone(), 8 * 64  # 64 patches


@pytest.mark.parametrize("arch", [llava, qwen2_vl], ids=["llava", "qwen2_vl"])
def test_first_step_dpo_loss_and_gradient_equal_trl(tmp_path, arch):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    processor, build, projector_grad, trl_pixel_rows = arch()
    policy = build(0)
    reference = build(1)  # differs from the policy: loss != log 2
    rows = records()
    config = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=BETA, loss_type=["sigmoid"],
                       max_length=None, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                       bf16=False, fp16=False, disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=processor)
    inputs = trainer.data_collator([dict(r) for r in rows])
    assert inputs["pixel_values"].shape[0] == trl_pixel_rows  # TRL: the image once for chosen, once for rejected
    policy.zero_grad()
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grad = projector_grad(policy)

    examples = [parse_vision_record(f"record {i}", r, "pairs", ".")[0] for i, r in enumerate(rows)]
    tokenized, _ = tokenize_vision_examples(examples, processor)
    for i, ex in enumerate(tokenized):  # the same token ids as TRL's collator
        mask = inputs["attention_mask"][i].bool()
        assert inputs["input_ids"][i][mask].tolist() == ex.prompt_ids + ex.completions[0]
    batch = collate_vision(tokenized)
    assert batch.pixel_values.shape[0] == trl_pixel_rows // 2  # dpokit: once per pair
    loss_fn = get_loss("dpo", beta=BETA)
    engine = VisionLogProbEngine(loss_fn.needs, processor.tokenizer.pad_token_id, "prompt_shared")
    policy.zero_grad()
    loss = loss_fn(engine.loss_inputs(policy, batch, ModelReference(reference))).loss.mean()
    loss.backward()
    print(f"{arch.__name__} first-step DPO loss: dpokit {loss.item():.8f}, TRL {trl_loss.item():.8f}")
    assert abs(loss.item() - 0.6931) > 1e-3
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(projector_grad(policy), trl_grad, atol=1e-6, rtol=1e-4)
