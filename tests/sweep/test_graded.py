"""The graded-reward demo task: five reward levels, verifiable, and demonstrations that spread over them."""

from dpokit.tasks.graded import GradedTask, build_graded_lists, build_graded_pairs, distance, graded_reward


def test_levels():
    task = GradedTask()
    prompt = task.prompt(472)
    assert prompt == "number : 4 7 2 . last digit ?"
    assert task.number_of(prompt) == 472
    assert [task.reward(prompt, f"it is {d}") for d in (2, 3, 1, 4, 0, 5, 9, 6, 7)] == \
        [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    assert task.reward(prompt, "answer : ") == 0.0
    assert task.reward(prompt, "7 no 2") == 1.0  # the last digit word counts
    assert graded_reward(prompt, "2") == 1.0
    assert distance(9, 1) == 2 and distance(0, 5) == 5


def test_demonstrations_cover_every_level():
    task = GradedTask(warmup_accuracy=0.25, seed=0)
    numbers, _ = task.split_numbers(400, 10)
    rewards = [task.reward(p, a) for p, a in task.demonstrations(numbers)]
    assert set(rewards) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert 0.18 < rewards.count(1.0) / len(rewards) < 0.32


def test_pairs_and_lists():
    task = GradedTask()
    prompts = [task.prompt(472), task.prompt(13)]
    samples = [["2", "it is 3", "", "answer : 7"], ["3", "3", ""]]
    pairs = build_graded_pairs(task, prompts, samples, seed=0)
    assert pairs == [{"prompt": prompts[0], "chosen": " 2", "rejected": " answer : 7",
                      "score_chosen": 1.0, "score_rejected": 0.0}]
    lists = build_graded_lists(task, prompts, samples)
    assert lists == [{"prompt": prompts[0], "responses": [" 2", " it is 3", " answer : 7"], "scores": [1.0, 0.75, 0.0]}]


def test_demo_task_choices(capsys, tmp_path):
    from dpokit.cli import main
    from dpokit.tasks.demo import DemoSettings, TASKS

    assert set(TASKS) == {"parity", "graded"} and DemoSettings().task == "parity" and DemoSettings().label_noise == 0
    assert main(["demo", "--online", "--task", "graded", "--output-dir", str(tmp_path)]) == 2
    assert "--online runs the parity task only" in capsys.readouterr().err
