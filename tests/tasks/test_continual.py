"""Continual preference learning (``dpokit.tasks.continual``): the reward-matrix metrics against values
worked out by hand, the digit tasks' rewards, the loss the runner builds (phi-DPO at gamma 0 is DPO,
values and gradients), and the runner end to end on a tiny split."""

import json
import random

import pytest
import torch
import yaml

from dpokit.losses import get_loss
from dpokit.losses.base import LossInputs
from dpokit.tasks.continual import (
    CONTINUAL_TASKS,
    ContinualSettings,
    FirstDigitTask,
    MiddleDigitTask,
    backward_transfer,
    continual_metrics,
    final_average_reward,
    forgetting,
    forgetting_per_task,
    main,
    run_continual,
)
from dpokit.tasks.graded import GradedTask

# rows: after task t; columns: task j (entries past the diagonal: tasks not trained yet)
MATRIX = [[0.6, 0.1, 0.2],
          [0.4, 0.8, 0.3],
          [0.5, 0.5, 0.9]]


def test_metrics_by_hand():
    # task 0: best after learning it max(0.6, 0.4) = 0.6, final 0.5 -> 0.1
    # task 1: best max(0.8) = 0.8, final 0.5 -> 0.3
    assert forgetting_per_task(MATRIX) == pytest.approx([0.1, 0.3])
    assert forgetting(MATRIX) == pytest.approx(0.2)
    # (0.5 - 0.6 + 0.5 - 0.8) / 2
    assert backward_transfer(MATRIX) == pytest.approx(-0.2)
    assert final_average_reward(MATRIX) == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    metrics = continual_metrics(MATRIX)
    assert metrics["forgetting/1"] == pytest.approx(0.3) and metrics["reward/2"] == pytest.approx(0.9)
    assert "forgetting/2" not in metrics  # the last task has nothing after it to forget under


def test_forgetting_uses_the_best_reward_after_learning_not_before():
    # task 0 peaks at the end of task 1 (0.7): forgetting 0.7 - 0.2; its pre-training entry is ignored
    matrix = [[0.3, 0.9, 0.0], [0.7, 0.4, 0.0], [0.2, 0.6, 0.5]]
    assert forgetting_per_task(matrix) == pytest.approx([0.5, -0.2])  # task 1 improved after it was learned
    assert forgetting(matrix) == pytest.approx(0.15)
    assert backward_transfer(matrix) == pytest.approx(((0.2 - 0.3) + (0.6 - 0.4)) / 2)


def test_lower_triangle_is_enough_and_bad_matrices_are_named():
    triangle = [[0.6], [0.4, 0.8], [0.5, 0.5, 0.9]]
    assert forgetting(triangle) == pytest.approx(forgetting(MATRIX))
    assert continual_metrics([[0.7]]) == {"final_average_reward": 0.7, "reward/0": 0.7}
    with pytest.raises(ValueError, match="row 1"):
        forgetting([[0.6], [0.4]])
    with pytest.raises(ValueError, match="at least two tasks"):
        forgetting([[0.6]])
    with pytest.raises(ValueError, match="no rows"):
        final_average_reward([])


def test_digit_tasks_reward_their_own_digit():
    first, middle, last = FirstDigitTask(), MiddleDigitTask(), GradedTask()
    prompt = first.prompt(472)
    assert prompt == "number : 4 7 2 . first digit ?"
    assert [t.digit_of(472) for t in (first, middle, last)] == [4, 7, 2]
    assert first.reward(prompt, "it is 4") == 1.0 and first.reward(prompt, "it is 2") == 0.5
    assert middle.reward(middle.prompt(472), "7") == 1.0 and last.reward(last.prompt(472), "answer : 3") == 0.75
    rng = random.Random(0)
    assert all(first.reward(first.prompt(n), first.answer(n, 0, rng)) == 1.0 for n in range(0, 1000, 37))
    assert "first" in " ".join(first.vocabulary_corpus()) and set(CONTINUAL_TASKS) >= {"parity", "first_digit"}


def _grad_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    t = lambda: (-(1 + 30 * torch.rand(6, generator=g, dtype=torch.float64))).requires_grad_()
    lengths = torch.randint(1, 20, (2, 6), generator=g).to(torch.float64)
    return LossInputs(policy_chosen_logps=t(), policy_rejected_logps=t(), reference_chosen_logps=t().detach(),
                      reference_rejected_logps=t().detach(), chosen_lengths=lengths[0], rejected_lengths=lengths[1])


@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_phi_dpo_at_gamma_zero_is_the_runners_dpo(seed, sft_weight):
    """The losses the runner builds: phi-DPO (gamma 0) and DPO, each with the same NLL term, agree in
    value and gradient; at gamma 2 they differ."""
    def loss_and_grad(loss_name, **hparams):
        name = ContinualSettings(loss=loss_name, sft_weight=sft_weight).loss_section()["name"]
        x = _grad_inputs(seed)
        loss = get_loss(name, beta=0.1, **hparams)(x).loss.mean()
        loss.backward()
        return loss.detach(), x.policy_chosen_logps.grad, x.policy_rejected_logps.grad

    dpo, phi0, phi2 = loss_and_grad("dpo"), loss_and_grad("phi_dpo", gamma=0.0), loss_and_grad("phi_dpo", gamma=2.0)
    for a, b in zip(dpo, phi0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(dpo[1], phi2[1])


def test_loss_section_and_bad_settings():
    assert ContinualSettings(loss="phi_dpo", sft_weight=1.0, loss_hparams={"gamma": 2.0}).loss_section() == {
        "name": "phi_dpo + 1*sft", "beta": 0.1, "gamma": 2.0}
    assert ContinualSettings(sft_weight=0.0).loss_section()["name"] == "dpo"
    with pytest.raises(ValueError, match="unknown task 'sum'"):
        ContinualSettings(tasks=("parity", "sum")).check()
    with pytest.raises(ValueError, match="at most once"):
        ContinualSettings(tasks=("parity", "parity")).check()


TINY = {"n_train_prompts": 16, "n_eval_prompts": 6, "samples_per_prompt": 4, "eval_samples_per_prompt": 1,
        "warmup_steps": 8, "epochs": 1, "hidden_size": 32}


@pytest.mark.slow
def test_runner_end_to_end(tmp_path):
    settings = ContinualSettings(output_dir=str(tmp_path / "run"), loss="phi_dpo", **TINY)
    summary = run_continual(settings, log=lambda *a: None)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(saved["matrix"]) == 3 and all(len(row) == 3 for row in saved["matrix"])
    assert saved["metrics"] == pytest.approx(continual_metrics(saved["matrix"]))
    assert all(0.0 <= r <= 1.0 for row in saved["matrix"] for r in row) and all(n > 0 for n in saved["train_pairs"])
    # each task starts from, and is anchored to, the previous task's model
    config = yaml.safe_load((tmp_path / "run" / "task1_last_digit" / "train" / "config.yaml").read_text())
    previous = str(tmp_path / "run" / "task0_parity" / "train" / "final")
    assert config["model"]["name_or_path"] == previous
    assert config["reference"] == {**config["reference"], "kind": "path", "path": previous}
    assert summary["final"].endswith("task2_first_digit/train/final")
    # the module's command line: reuses the warm-up in its output directory
    out = main(["--out", str(tmp_path / "run"), "--tasks", "parity", "--loss", "dpo", "--n-train-prompts", "16",
                "--n-eval-prompts", "6", "--epochs", "1", "--warmup-steps", "8"], log=lambda *a: None)
    assert len(out["matrix"]) == 1 and out["loss"]["name"] == "dpo + 1*sft"
