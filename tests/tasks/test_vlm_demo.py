"""`dpokit demo --modality vlm --quick`: the whole vision-language path runs and writes its summary."""

import json

import pytest

from dpokit.cli import main

pytestmark = pytest.mark.slow


def test_quick_vlm_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--modality", "vlm", "--quick", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for side in ("before", "after"):
        assert set(summary[side]) >= {"reward", "greedy_accuracy", "preference_accuracy"}
        assert 0.0 <= summary[side]["reward"] <= 1.0
    assert summary["before"]["preference_accuracy"] == 0.5  # policy == reference before training
    assert (out / "train" / "final" / "processor_config.json").exists()
    assert "expected reward (sampled)" in capsys.readouterr().out
