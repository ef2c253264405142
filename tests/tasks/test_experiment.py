"""The demos' shared skeleton (dpokit.tasks.experiment): summary file, table, loss and train sections."""

import dataclasses
import json

import torch

from dpokit.losses import get_spec
from dpokit.tasks.experiment import (DemoRun, LossDemoSettings, format_table, loss_hparams, torch_threads,
                                     train_section)


def test_finish_appends_the_clock_and_run_dir_writes_the_summary_and_logs_the_table(tmp_path):
    lines = []
    run = DemoRun.start(str(tmp_path / "run"), seed=3, log=lines.append)
    first = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(first, torch.rand(1))  # start seeds torch with the run's seed
    summary = run.finish({"task": "t", "before": {"reward": 0.25}, "after": {"reward": 0.5}, "train_pairs": 7},
                         rows=(("reward", "reward"),), width=10, notes=["a note"])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(on_disk) == ["task", "before", "after", "train_pairs", "seconds", "run_dir"]
    assert on_disk == summary and on_disk["run_dir"] == str(tmp_path / "run")
    assert lines[0] == format_table({"reward": 0.25}, {"reward": 0.5}, (("reward", "reward"),), width=10)
    assert lines[1] == "a note"
    assert lines[2] == f"summary: {tmp_path / 'run' / 'summary.json'}  ({summary['seconds']} s)"


def test_finish_with_cpu_adds_cpu_seconds_before_run_dir(tmp_path):
    lines = []
    run = DemoRun.start(str(tmp_path), seed=0, log=lines.append)
    summary = run.finish({"before": {"x": 1.0}, "after": {"x": 2.0}}, rows=(("x", "x"),), cpu=True)
    assert list(summary)[-3:] == ["seconds", "cpu_seconds", "run_dir"]
    assert lines[-1].endswith(f"({summary['seconds']} s, {summary['cpu_seconds']} s CPU)")


def test_format_table_layout():
    table = format_table({"a": 0.1234, "b": 2.0}, {"a": -0.5, "b": 3.25}, (("first", "a"), ("second", "b")), width=8)
    assert table.splitlines() == ["metric      before     after", "-" * 28,
                                  "first        0.123    -0.500", "second       2.000     3.250"]


def test_loss_hparams_adds_the_demo_beta_only_for_a_reference_loss_without_one():
    assert loss_hparams(get_spec("dpo"), {}, 0.5) == {"beta": 0.5}
    assert loss_hparams(get_spec("dpo"), {"beta": 0.2}, 0.5) == {"beta": 0.2}
    assert loss_hparams(get_spec("simpo"), {"gamma": 1.0}, 0.5) == {"gamma": 1.0}  # reference-free: its own beta
    given = {"label_smoothing": 0.1}
    loss_hparams(get_spec("dpo"), given, 0.5)
    assert given == {"label_smoothing": 0.1}  # not changed in place


def test_train_section_keeps_the_shared_keys_and_appends_extra():
    section = train_section("out/train", 1, 2, 16, 1e-3, 5, layout="prompt_shared")
    assert list(section)[-1] == "layout" and section["layout"] == "prompt_shared"
    assert section["scheduler"] == "cosine" and section["warmup_ratio"] == 0.05 and section["report_to"] == []
    assert (section["output_dir"], section["seed"], section["epochs"], section["batch_size"], section["lr"],
            section["log_every"]) == ("out/train", 1, 2, 16, 1e-3, 5)


def test_settings_subclasses_keep_the_shared_fields_first():
    from dpokit.tasks.demo import DemoSettings
    from dpokit.tasks.vlm_demo import VLMDemoSettings

    shared = [f.name for f in dataclasses.fields(LossDemoSettings)]
    for cls, out in ((DemoSettings, "runs/demo"), (VLMDemoSettings, "runs/demo-vlm")):
        assert [f.name for f in dataclasses.fields(cls)][:len(shared)] == shared
        assert cls().output_dir == out


def test_torch_threads_restores_the_previous_number():
    previous = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous
