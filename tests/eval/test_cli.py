"""`dpokit eval` on a tiny trained run: every key, tables, checkpoints, and the loss it reports."""

import json
import os

import pytest

from dpokit.cli import main
from dpokit.eval.suite import EVAL_KEYS

from conftest import read_jsonl


def test_eval_writes_every_key(evaluated_run, tiny_model_dir):
    result = json.load(open(os.path.join(evaluated_run["run"], "eval.json")))
    assert set(EVAL_KEYS) <= set(result)
    assert result["reference"] == tiny_model_dir  # the run's reference (its initial model)
    assert result["beta"] == 0.1 and result["num_pairs"] == 12
    for key in ("preference_accuracy", "reward_margin_mean", "judge_reward", "win_rate", "kl", "length_mean",
                "distinct_2", "topk_mass", "topk_entropy", "separability", "loss"):
        assert isinstance(result[key], float), key
    assert set(result["logp_drift"]) >= {"chosen", "rejected", "unseen", "reference_samples"}
    assert 0.0 <= result["win_rate"] <= 1.0 and result["kl"] >= 0.0
    assert len(result["layers"]["contraction"]["policy"]) == 2 and len(result["layers"]["transport"]["delta"]) == 1
    hist = result["reward_margin_histogram"]
    assert sum(hist["counts"]) == 12 and len(hist["edges"]) == len(hist["counts"]) + 1
    samples = read_jsonl(os.path.join(evaluated_run["run"], "samples.jsonl"))
    assert len(samples) == 12 and all(len(s["policy"]) == 2 and len(s["reference"]) == 2 for s in samples)
    assert all(len(s["policy_scores"]) == 2 for s in samples)


def test_eval_table_and_checkpoint_model(evaluated_run, capsys):
    run = evaluated_run["run"]
    checkpoint = os.path.join(run, "checkpoints", sorted(os.listdir(os.path.join(run, "checkpoints")))[-1])
    capsys.readouterr()
    assert main(["eval", "--model", checkpoint, "--data", evaluated_run["heldout"], "--no-diagnostics"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_checkpoint["step"] == 4
    final = json.load(open(os.path.join(run, "eval.json")))
    # the last checkpoint holds the final weights
    assert from_checkpoint["preference_accuracy"] == final["preference_accuracy"]
    assert from_checkpoint["logps_chosen_mean"] == pytest.approx(final["logps_chosen_mean"], abs=1e-4)
    assert main(["eval", "--model", run, "--data", evaluated_run["heldout"], "--format", "table", "--no-diagnostics",
                 "--ref", "none"]) == 0
    table = capsys.readouterr().out
    assert "preference accuracy" in table and "no reference" in table


# ---- the loss `dpokit eval` reports: --loss, --beta, --hparam and the run's own loss section -------------------

def _eval(capsys, *argv):
    capsys.readouterr()
    code = main(["eval", "--no-diagnostics", *argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def rdpo_run(trained_run, tmp_path_factory):
    """The trained run, its config.yaml saying it trained rdpo (beta 0.2, eps 0.25) with LD-DPO (alpha 0.5)."""
    import shutil

    import yaml

    run = str(tmp_path_factory.mktemp("rdpo") / "run")
    shutil.copytree(trained_run["run"], run)
    config = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    config["loss"] = {"name": "rdpo", "beta": 0.2, "eps": 0.25, "modifiers": {"ld_alpha": 0.5}}
    with open(os.path.join(run, "config.yaml"), "w") as handle:
        yaml.safe_dump(config, handle)
    return run


def _rdpo_expected(dpo_loss, margin_mean, eps):
    # rdpo = [(1-eps) softplus(-z) - eps softplus(z)] / (1-2eps) and softplus(z) = softplus(-z) + z,
    # so its mean is dpo - eps/(1-2eps) * mean(z), z = beta * margin (the reported reward margin)
    return dpo_loss - eps / (1.0 - 2.0 * eps) * margin_mean


def test_hparam_sets_the_eval_loss(trained_run, capsys):
    run, data = trained_run["run"], trained_run["heldout"]
    code, dpo, _ = _eval(capsys, "--model", run, "--data", data, "--loss", "dpo")
    assert code == 0 and dpo["loss_config"] == {"name": "dpo", "beta": 0.1}
    assert abs(dpo["reward_margin_mean"]) > 1e-3  # a trained policy: rdpo differs from dpo
    for eps in (0.0, 0.1, 0.3):
        code, rdpo, _ = _eval(capsys, "--model", run, "--data", data, "--loss", "rdpo", "--hparam", f"eps={eps}")
        assert code == 0 and rdpo["loss_config"] == {"name": "rdpo", "eps": eps}
        assert rdpo["loss_name"] == "rdpo" and rdpo["beta"] == 0.1
        assert rdpo["loss"] == pytest.approx(_rdpo_expected(dpo["loss"], dpo["reward_margin_mean"], eps), abs=1e-5)
    # --hparam beta is the loss's beta and the implicit-reward scale
    code, scaled, _ = _eval(capsys, "--model", run, "--data", data, "--loss", "dpo", "--hparam", "beta=0.3")
    assert code == 0 and scaled["beta"] == 0.3
    assert scaled["reward_margin_mean"] == pytest.approx(3 * dpo["reward_margin_mean"], rel=1e-5)


def test_beta_still_sets_scale_and_loss(trained_run, capsys):
    run, data = trained_run["run"], trained_run["heldout"]
    code, base, _ = _eval(capsys, "--model", run, "--data", data, "--loss", "dpo")
    code, scaled, _ = _eval(capsys, "--model", run, "--data", data, "--loss", "dpo", "--beta", "0.3")
    assert code == 0 and scaled["beta"] == 0.3 and scaled["loss_config"] == {"name": "dpo", "beta": 0.3}
    assert scaled["reward_margin_mean"] == pytest.approx(3 * base["reward_margin_mean"], rel=1e-5)
    assert scaled["loss"] != pytest.approx(base["loss"])
    # without --loss, --beta scales the implicit rewards of the run's own loss (dpo, beta 0.1 -> 0.3)
    code, own, _ = _eval(capsys, "--model", run, "--data", data, "--beta", "0.3")
    assert code == 0 and own["loss"] == pytest.approx(scaled["loss"], abs=1e-6)


def test_run_dir_loss_settings_are_used(rdpo_run, trained_run, capsys):
    data = trained_run["heldout"]
    code, own, _ = _eval(capsys, "--model", rdpo_run, "--data", data)
    assert code == 0
    assert own["loss_name"] == "rdpo" and own["beta"] == 0.2
    assert own["loss_config"] == {"name": "rdpo", "beta": 0.2, "eps": 0.25, "modifiers": {"ld_alpha": 0.5}}
    # --loss naming the run's loss keeps its settings
    code, same, _ = _eval(capsys, "--model", rdpo_run, "--data", data, "--loss", "rdpo")
    assert same["loss"] == own["loss"] and same["loss_config"] == own["loss_config"]
    # --hparam changes one setting of the run's section; LD-DPO with alpha 1 is plain rdpo
    code, dpo, _ = _eval(capsys, "--model", rdpo_run, "--data", data, "--loss", "dpo", "--beta", "0.2")
    assert dpo["loss_config"] == {"name": "dpo", "beta": 0.2}  # another loss: its own defaults
    code, plain, _ = _eval(capsys, "--model", rdpo_run, "--data", data, "--hparam", "modifiers.ld_alpha=1.0")
    assert plain["loss_config"]["eps"] == 0.25 and plain["loss_config"]["modifiers"] == {"ld_alpha": 1.0}
    assert plain["loss"] == pytest.approx(_rdpo_expected(dpo["loss"], dpo["reward_margin_mean"], 0.25), abs=1e-5)
    assert own["loss"] != pytest.approx(plain["loss"], abs=1e-4)  # the run's alpha 0.5 was applied
    code, eps, _ = _eval(capsys, "--model", rdpo_run, "--data", data, "--hparam", "eps=0.1",
                         "--hparam", "modifiers.ld_alpha=1.0")
    assert eps["loss"] == pytest.approx(_rdpo_expected(dpo["loss"], dpo["reward_margin_mean"], 0.1), abs=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--loss", "rdpo", "--hparam", "epz=0.2"], "no hyperparameter(s) ['epz']; it accepts ['beta', 'eps']"),
    (["--loss", "rdpo", "--hparam", "eps=0.7"], "eps (label-flip rate) must be in [0, 0.5), got 0.7"),
    (["--loss", "rdpo", "--hparam", "eps"], "--hparam expects KEY=VALUE"),
    (["--loss", "nope"], "unknown loss 'nope'"),
    (["--hparam", "eps=0.1"], "give --loss NAME"),
    (["--loss", "dpo", "--ref", "none"], "loss 'dpo' needs a reference model"),
    (["--loss", "kto"], "loss 'kto' trains on unpaired"),
])
def test_bad_loss_arguments_fail_cleanly(trained_run, tiny_model_dir, capsys, argv, message):
    # a plain model directory (no run config): the loss comes from the arguments only
    code, _, err = _eval(capsys, "--model", os.path.join(trained_run["run"], "final"), "--ref", tiny_model_dir,
                         "--data", trained_run["heldout"], *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpokit eval: error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_run_loss_without_reference_is_skipped(rdpo_run, trained_run, capsys):
    code, result, err = _eval(capsys, "--model", rdpo_run, "--data", trained_run["heldout"], "--ref", "none")
    assert code == 0 and result.get("loss") is None and result["loss_name"] == "rdpo"
    assert "the run's loss is not reported: loss 'rdpo[ld_alpha]' needs a reference model" in err
    assert any("needs a reference model" in note for note in result["notes"])


def test_eval_of_a_diffusion_run_is_refused_with_the_reason(tmp_path, capsys):
    """A diffusion run (final/ is a pipeline: model_index.json) is recognised as a run and refused
    with where its held-out metrics are, not a traceback."""
    import yaml

    from dpokit.cli import main

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model_index.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"kind": "diffusion", "name_or_path": "pipe"}}))
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"caption": "x", "chosen": "a.png", "rejected": "b.png"}\n')
    assert main(["eval", "--model", str(run), "--data", str(data)]) == 2
    assert "model.kind diffusion: dpokit eval scores language and vision-language models" in capsys.readouterr().err
