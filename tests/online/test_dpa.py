"""``online.strategy: dpa_rsf`` (DPA's iterative rejection-sampling fine-tuning): selection by ``v . r``,
direction sampling and prompts, option checks, a round end to end on the word-level policy, and the
identity with the single-objective run."""

import json
import math

import pytest
import torch

from dpokit.config import ConfigError
from dpokit.online.dpa import pick_best, sample_directions
from dpokit.online.loop import OnlineLoop, read_jsonl
from dpokit.preflight import checked_config
from dpokit.preference.multi_objective import DIRECTION_TEMPLATE, direction_prompt

from .conftest import loop_for, online_raw, same_weights, weights_of

import os

from .dpa_rewards import two_rewards

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpa_rewards.py")


def test_pick_best_is_the_argmax_of_v_dot_r_over_non_empty_responses():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6], [5.0, 5.0]])
    texts = ["a", "b", "c", "  "]
    for theta, expected in ((0, 0), (90, 1), (45, 2), (30, 0), (60, 1)):
        v = torch.tensor([math.cos(math.radians(theta)), math.sin(math.radians(theta))], dtype=torch.float64)
        values = (r.double() @ v).tolist()
        independent = max((i for i in range(3)), key=lambda i: (values[i], -i))  # the empty 4th never counts
        assert pick_best(values, texts) == independent == expected, theta
    assert pick_best([1.0, 1.0, 0.5], ["x", "y", "z"]) == 0  # ties: the first
    assert pick_best([1.0], [""]) == -1


def test_sample_directions_on_the_arc_or_from_the_list():
    vs = sample_directions(200, seed=3, angles=(10.0, 40.0))
    thetas = [math.degrees(math.atan2(y, x)) for x, y in vs]
    assert min(thetas) >= 10 - 1e-9 and max(thetas) <= 40 + 1e-9 and max(thetas) - min(thetas) > 25
    assert all(abs(math.hypot(*v) - 1) < 1e-12 for v in vs)
    assert sample_directions(5, seed=3, angles=(10.0, 40.0)) == vs[:5]  # seeded
    listed = sample_directions(50, seed=0, directions=[[3, 4], [1, 0, ]])
    assert {tuple(round(x, 6) for x in v) for v in listed} == {(0.6, 0.8), (1.0, 0.0)}


def test_direction_prompt_text_and_messages():
    v = [math.cos(math.radians(30)), math.sin(math.radians(30))]
    assert direction_prompt("q a :", v, ["x", "y"]) == "Your response should maximize weighted rating = x*87 + y*50.\n\nq a :"
    messages = [{"role": "user", "content": "hi"}]
    assert direction_prompt(messages, v, ["x", "y"]) == [
        {"role": "system", "content": "Your response should maximize weighted rating = x*87 + y*50."}, messages[0]]
    with_system = [{"role": "system", "content": "Be brief."}, messages[0]]
    assert direction_prompt(with_system, [1, 0], ["x", "y"])[0]["content"] == \
        "Your response should maximize weighted rating = x*100 + y*0.\n\nBe brief."
    assert direction_prompt("p", [1, 1], ["a", "b"], template="Weights: {terms}") == "Weights: a*71 + b*71\n\np"
    with pytest.raises(ValueError, match="text prompt or a list of chat messages"):
        direction_prompt(3, [1, 0], ["x", "y"])


def raw_dpa(policy_dir, tmp_path, prompts_file, **options):
    raw = online_raw(policy_dir, tmp_path / "run", "dpa_rsf", rounds=1, prompts_per_round=8, samples_per_prompt=4,
                     prompts=prompts_file, options={"rewards": f"{HERE}:two_rewards", "objectives": ["one", "two"],
                                                    **options})
    raw["online"].pop("judge")
    raw["loss"] = {"name": "sft_unpaired"}
    return raw


def test_options_are_checked(policy_dir, prompts_file, tmp_path, monkeypatch):
    good = raw_dpa(policy_dir, tmp_path, prompts_file)
    assert checked_config(good).online.strategy == "dpa_rsf"
    cases = [({"rewards": None}, "exactly one of reward_model"),
             ({"reward_model": "some/dir"}, "exactly one of reward_model"),
             ({"objectives": None}, "name the columns rewards returns"),
             ({"angles": [50, 10]}, "low <= high"),
             ({"objectives": ["a", "b", "c"]}, "directions by angle need two objectives"),
             ({"directions": [[1, 0], [1]]}, r"directions\[1\]"),
             ({"directions": [[0, 0]]}, "not a non-zero vector"),
             ({"template": "no terms here"}, "'{terms}'"),
             ({"n": 3}, "has no option")]
    for change, message in cases:
        raw = raw_dpa(policy_dir, tmp_path, prompts_file)
        raw["online"]["options"].update(change)
        with pytest.raises(ConfigError, match=message):
            checked_config(raw)
    raw = raw_dpa(policy_dir, tmp_path, prompts_file, directions=[[1.0, 0.0]])
    import dpokit.online.dpa as dpa  # a reward model whose objectives (read at setup) do not fit the directions
    monkeypatch.setattr(dpa, "load_rewarder", lambda *a, **k: (None, ["one"]))
    with pytest.raises(ConfigError, match=r"directions: \[1.0, 0.0\] has 2 components; the reward has 1"):
        OnlineLoop(checked_config(raw)).strategy.setup()
    raw = raw_dpa(policy_dir, tmp_path, prompts_file)
    raw["loss"] = {"name": "ipo"}
    with pytest.raises(ConfigError, match="sft_unpaired"):
        checked_config(raw)
    raw["loss"] = {"name": "dpo"}  # the default loss is replaced by the strategy's
    assert checked_config(raw).online.strategy == "dpa_rsf"
    from dpokit.preflight import check_run  # a pairwise strategy does not build single completions
    raw = {**online_raw(policy_dir, tmp_path / "x", "online_dpo", prompts=prompts_file), "loss": {"name": "sft_unpaired"}}
    with pytest.raises(ConfigError, match="builds pairs or lists; loss 'sft_unpaired' trains on unpaired"):
        check_run(checked_config.__globals__["from_dict"](raw))


def test_rewards_function_results_are_checked(policy_dir, prompts_file, tmp_path):
    from dpokit.preference.directional import load_rewarder

    fn, names = load_rewarder(rewards=f"{HERE}:two_rewards", objectives=["one", "two"])
    assert names == ["one", "two"] and fn(["p"], ["a a b"]).tolist() == [[0.0, 2 / 3]]
    bad, _ = load_rewarder(rewards=lambda p, r: [[1.0]] * len(r), objectives=["one", "two"])
    with pytest.raises(ValueError, match=r"expected 2 rows of 2 objective values, got shape \(2, 1\)"):
        bad(["p", "p"], ["a", "b"])
    nan, _ = load_rewarder(rewards=lambda p, r: [[1.0, float("nan")]] * len(r), objectives=["one", "two"])
    with pytest.raises(ValueError, match=r"row 0 \('a'\) has a non-finite value"):
        nan(["p"], ["a"])
    with pytest.raises(ValueError, match="exactly one of"):
        load_rewarder()


def test_a_round_selects_the_best_by_v_dot_r_and_fine_tunes(policy_dir, prompts_file, tmp_path):
    raw = raw_dpa(policy_dir, tmp_path, prompts_file, angles=[0, 90])
    loop = OnlineLoop(checked_config(raw))
    start = weights_of(loop.policy)
    result = loop.run()
    assert result["status"] == "completed"
    rdir = tmp_path / "run" / "rounds" / "round-000"
    records, train = read_jsonl(str(rdir / "pairs.jsonl")), read_jsonl(str(rdir / "train.jsonl"))
    samples = {row["index"]: row for row in read_jsonl(str(rdir / "samples.jsonl"))}
    assert len(records) == 8 and len(train) == sum(r["selected"] >= 0 for r in records) > 0
    rows = iter(train)
    for rec in records:
        v = rec["direction"]
        # the recorded rewards are the function's on the prompt without the direction text
        torch.testing.assert_close(torch.tensor(rec["rewards"], dtype=torch.float64),
                                   torch.tensor(two_rewards(None, rec["responses"]), dtype=torch.float64))
        values = [v[0] * a + v[1] * b for a, b in rec["rewards"]]
        usable = [i for i, t in enumerate(rec["responses"]) if t.strip()]
        if not usable:
            continue
        best = max(usable, key=lambda i: (values[i], -i))
        assert rec["selected"] == best
        row = next(rows)
        assert row["completion"] == rec["responses"][best] and row["label"] is True
        assert row["prompt"] == direction_prompt(rec["prompt"], v, ["one", "two"], DIRECTION_TEMPLATE)
        assert samples[rec["prompt_index"]]["prompt"] == row["prompt"]  # the policy was sampled conditioned
        assert row["completion_ids"] == samples[rec["prompt_index"]]["completion_ids"][best]
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert metrics["trained"] and metrics["steps"] > 0 and "dpa/mean_one" in metrics
    assert not same_weights(weights_of(loop.policy), start)


def test_one_direction_dpa_equals_the_single_objective_run(policy_dir, prompts_file, tmp_path):
    """Direction (1, 0) over (r_1, r_2) selects, trains and ends exactly as the one-objective run on r_1
    (the direction left out of the prompt, which would differ in its text); direction (0, 1) does not."""
    def run(name, **options):
        raw = raw_dpa(policy_dir, tmp_path / name, prompts_file, condition=False, **options)
        raw["online"]["rounds"] = 2
        loop = OnlineLoop(checked_config(raw))
        loop.run()
        rows = [read_jsonl(str(tmp_path / name / "run" / "rounds" / f"round-{r:03d}" / "train.jsonl")) for r in (0, 1)]
        return rows, weights_of(loop.policy)

    two, w_two = run("two", directions=[[1.0, 0.0]])
    one, w_one = run("one", rewards=f"{HERE}:first_reward", objectives=["one"], directions=[[2.0]])
    other, w_other = run("other", directions=[[0.0, 1.0]])
    assert two == one and same_weights(w_two, w_one, atol=0)
    assert other[0] != two[0] and not same_weights(w_other, w_two)


def test_generate_command_at_a_direction(policy_dir, prompts_file, tmp_path, capsys):
    """``dpokit generate``: the direction given at generation time, best-of-n and RPS by v . r."""
    from dpokit.cli import main

    common = ["generate", "--model", policy_dir, "--prompts", prompts_file, "--max-new-tokens", "4"]
    out = tmp_path / "plain.jsonl"
    assert main(common + ["--direction", "3,4", "--objectives", "one,two", "--output", str(out)]) == 0
    rows = read_jsonl(str(out))
    assert len(rows) == 16 and rows[0]["direction"] == pytest.approx([0.6, 0.8]) and "value" not in rows[0]
    for extra in (["--samples", "3"], ["--rps", "3", "--rps-delta", "15"]):
        out = tmp_path / "best.jsonl"
        assert main(common + ["--direction", "1,1", "--rewards", f"{HERE}:two_rewards", "--objectives", "one,two",
                              "--output", str(out)] + extra) == 0
        for row in read_jsonl(str(out)):
            assert row["rewards"] == pytest.approx(two_rewards(None, [row["response"]])[0])
            assert row["value"] == pytest.approx(sum(row["rewards"]) / math.sqrt(2))
    capsys.readouterr()
    assert main(common + ["--direction", "1,0", "--objectives", "one,two", "--samples", "2"]) == 2
    assert "give --reward-model or --rewards" in capsys.readouterr().err
    assert main(common + ["--direction", "1,0,0", "--objectives", "one,two"]) == 2
    assert "3 components" in capsys.readouterr().err
