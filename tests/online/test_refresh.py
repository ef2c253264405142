"""Per-step refresh: fresh pairs sampled and judged for every optimizer step (RefreshingRound)."""

import pytest

from dpokit.config import ConfigError
from dpokit.preflight import checked_config

from .conftest import loop_for, online_raw

pytestmark = pytest.mark.slow  # an online run end to end: sampling, judging and training


def test_fresh_pairs_every_step(policy_dir, prompts_file, tmp_path):
    loop = loop_for(policy_dir, tmp_path, "online_dpo", prompts_file, rounds=1, refresh_every=1, prompts_per_round=8,
                    samples_per_prompt=4)
    result = loop.run()
    rdir = tmp_path / "run" / "rounds" / "round-000"
    assert (rdir / "samples-0000.jsonl").exists() and (rdir / "samples-0001.jsonl").exists()
    assert result["metrics"][0]["slices"] == 2 and result["metrics"][0]["steps"] == 2
    with pytest.raises(ConfigError, match="refresh_every"):
        checked_config(online_raw(policy_dir, tmp_path / "x", "iterative_dpo", prompts="p.jsonl", refresh_every=1))
