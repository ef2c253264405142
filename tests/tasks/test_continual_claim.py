"""The continual-learning claim script's --quick mode runs end to end: both methods, the gamma-0 setup
check, the table and a verdict; a rerun reuses every finished run."""

import pytest

from conftest import load_claim


def load():
    return load_claim("continual")


@pytest.mark.slow
def test_continual_claim_quick(tmp_path, capsys):
    record = load().main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(record["results"]) == {"dpo", "phi_dpo (gamma 2)"}
    assert "claim: UNDECIDED" in out  # one seed: no interval
    assert "| forgetting |" in out and "final reward, task 2 (first_digit)" in out
    # phi-DPO at gamma 0 reproduces DPO's first task exactly
    assert "setup check" in out and ": equal" in out
    for per_seed in record["results"].values():
        assert set(per_seed) == {"0"} and {"forgetting", "final_average_reward", "backward_transfer"} <= set(per_seed["0"])
    again = load().main(["--quick", "--out", str(tmp_path)])
    assert again["results"] == record["results"] and again["seconds"] < 5
