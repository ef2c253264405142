"""Bradley-Terry reward-model training (`dpokit train-rm`), the reward-model judge and rm_margin."""

import json

import pytest
import torch

from dpokit.preference.judges import RewardModelJudge, build_judge
from .conftest import tiny_classifier


@pytest.fixture(scope="module")
def rm_setup(tmp_path_factory):
    """A tiny LlamaForSequenceClassification built in-process, saved like a hub checkpoint."""
    return tiny_classifier(tmp_path_factory, "rm", margin=0.5)


def test_bradley_terry_loss_with_margin():
    from dpokit.preference.reward_model import bradley_terry_loss

    chosen, rejected, margin = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.0])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin),
                               -torch.nn.functional.logsigmoid(chosen - rejected - margin))


def test_train_rm_then_judge_and_rm_margin(rm_setup, tmp_path):
    from dpokit.cli import main
    from dpokit.data import load_examples

    init, data = rm_setup
    out = tmp_path / "rm"
    assert main(["train-rm", "--model", init, "--data", data, "--output-dir", str(out), "--epochs", "4",
                 "--lr", "3e-3", "--batch-size", "8", "--margin-column", "margin", "--eval-fraction", "0.25"]) == 0
    summary = json.loads((out / "rm_summary.json").read_text())
    assert summary["eval_after"]["accuracy"] >= 0.9 > summary["eval_before"]["accuracy"] - 0.5
    assert (out / "model.safetensors").exists()
    judge = build_judge({"kind": "reward_model", "path": str(out)})
    assert isinstance(judge, RewardModelJudge)
    good, bad = judge.score(["it is", "it is"], [" good great", " awful ugly"])
    assert good > bad
    # the trained model as the source of MADPO margins
    written = tmp_path / "with_margin.jsonl"
    assert main(["rm-margin", "--rm", str(out), "--data", data, "--output", str(written)]) == 0
    pairs = load_examples(str(written), "pairs")
    assert len(pairs) == 48 and all("rm_margin" in p.extras for p in pairs)
    assert sum(p.extras["rm_margin"] > 0 for p in pairs) >= 40
    first = json.loads(written.read_text().splitlines()[0])
    assert first["margin"] == 0.5  # the original columns are kept
