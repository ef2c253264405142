"""The VLM continual-learning claim script (benchmarks/claims/vlm_continual.py) end to end in --quick mode,
and the task definitions it rests on."""

import pytest

from conftest import load_claim


def test_the_three_questions_answer_in_the_same_words_with_different_maps():
    from dpokit.tasks.vlm_continual import NAMES, QUESTIONS, answer

    assert [answer(t, "red") for t in QUESTIONS] == ["red", "green", "yellow"]
    for colour in NAMES:  # next and previous undo each other; each is a permutation of the colours
        assert answer("previous", answer("next", colour)) == colour
    assert all(sorted(answer(t, c) for c in NAMES) == sorted(NAMES) for t in QUESTIONS)


@pytest.mark.slow
def test_vlm_continual_claim_quick(tmp_path, capsys):
    record = load_claim("vlm_continual").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(record["results"]) == {"dpo", "phi_dpo (gamma 2)"}
    assert "claim: UNDECIDED" in out  # one seed: no interval
    assert "| forgetting |" in out and "final reward, task 2 (previous)" in out
    assert "setup check" in out and ": equal" in out
    for per_seed in record["results"].values():
        assert 0.0 <= per_seed["0"]["final_average_reward"] <= 1.0
