"""`dpokit eval` and `dpokit report` on a vision-language run: pairs scored with their images (the
vlm engine), the text-only diagnostics and generation skipped with a note, the report rendered."""

import copy
import json
import os

import pytest
import torch

from dpokit.data.vision import collate_vision, parse_vision_record, tokenize_vision_examples
from dpokit.families import model_family
from dpokit.losses import get_loss
from dpokit.reference import ModelReference
from dpokit.scoring.vlm import VisionLogProbEngine
from dpokit.tasks import colours
from dpokit.tiny import tiny_llava, tiny_vlm_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_vlm_processor(colours.vocabulary_corpus(), vocab_size=64, word_level=True)


def pair_rows(n=6):
    items = colours.draw_items(n, seed=3)
    return [{"images": [image], "prompt": colours.prompt_messages(), "chosen": colours.answer_messages(colour),
             "rejected": colours.answer_messages("green" if colour != "green" else "red")} for colour, image in items]


def test_evaluate_checkpoint_scores_vlm_pairs_with_their_images(processor):
    from dpokit.eval.suite import EvalSettings, evaluate_checkpoint

    policy = tiny_llava(processor, hidden_size=32, seed=0).eval()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = [parse_vision_record(f"r:{i}", r, "pairs", ".")[0] for i, r in enumerate(pair_rows())]
    pairs, _ = tokenize_vision_examples(examples, processor)
    result, rows = evaluate_checkpoint(policy, reference, processor, pairs, None, None, get_loss("dpo", beta=0.1),
                                       EvalSettings(beta=0.1, samples=2), model_family("vlm"))
    engine = VisionLogProbEngine(get_loss("dpo").needs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        inputs = engine.loss_inputs(policy, collate_vision(pairs), ModelReference(copy.deepcopy(reference)))
    margins = 0.1 * (inputs.chosen_logratios() - inputs.rejected_logratios())
    assert result["num_pairs"] == 6 and rows == []
    assert result["reward_margin_mean"] == pytest.approx(float(margins.mean()), abs=1e-6)
    assert result["preference_accuracy"] == pytest.approx(float((margins > 0).float().mean()))
    assert result["loss"] == pytest.approx(float(get_loss("dpo", beta=0.1)(inputs).loss.mean()), abs=1e-6)
    notes = " ".join(result["notes"])
    assert "[partial] drift" in notes and "[partial] generation" in notes


@pytest.mark.slow
def test_eval_and_report_on_a_vlm_run_directory(processor, tmp_path, capsys):
    from dpokit.cli import main
    from dpokit.config import from_dict
    from dpokit.train import Trainer

    model_dir = str(tmp_path / "model")
    tiny_llava(processor, hidden_size=32, seed=0).save_pretrained(model_dir, safe_serialization=True)
    processor.save_pretrained(model_dir)
    items = colours.draw_items(12, seed=0)
    data = colours.write_records(colours.pair_records(items, ["green" if c == "red" else "red" for c, _ in items],
                                                      str(tmp_path), "p"), str(tmp_path / "pairs.jsonl"))
    run = str(tmp_path / "run")
    Trainer(from_dict({
        "model": {"name_or_path": model_dir, "kind": "vlm"}, "lora": {"enabled": True, "r": 4, "alpha": 8},
        "data": {"train": data, "eval": data, "max_length": 64}, "loss": {"name": "dpo", "beta": 0.1},
        "train": {"output_dir": run, "max_steps": 4, "batch_size": 4, "lr": 1e-2, "eval_every": 2, "log_every": 1,
                  "report_to": [], "progress_bar": False, "mixed_precision": "no", "warmup_steps": 0},
    })).fit()
    capsys.readouterr()
    assert main(["eval", "--model", run, "--data", data, "--output", str(tmp_path / "eval")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_kind"] == "vlm" and result["num_pairs"] == 12 and result["reference"] == model_dir
    assert result["loss_name"] == "dpo" and result["loss"] is not None
    assert os.path.exists(tmp_path / "eval" / "eval.json")
    assert main(["eval", "--model", run, "--prompts", data, "--generate", "1"]) == 2  # text prompts only
    assert main(["report", run]) == 0
    html = open(os.path.join(run, "report", "index.html")).read()
    assert "loss" in html and "<img" in html
