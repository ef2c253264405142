"""General preference model: the loss against NumPy, gradcheck, its identities, and the model, judge
and commands (`dpokit train-rm --kind gpm`, `dpokit eval-rm`)."""

import json

import numpy as np
import pytest
import torch

from dpokit.preference.gpm import gpm_loss, gpm_score, gpm_score_matrix, skew_operator
from .conftest import tiny_classifier


def np_gpm_loss(vw, vl, lam, tau, margin):
    """Independent: build R = blockdiag(lam_l [[0,-1],[1,0]]) explicitly, s = (R vw) . vl."""
    out = []
    for n in range(vw.shape[0]):
        k = vw.shape[1] // 2
        R = np.zeros((2 * k, 2 * k))
        for l in range(k):
            scale = 1.0 if lam is None else lam[n, l]
            R[2 * l, 2 * l + 1] = -scale
            R[2 * l + 1, 2 * l] = scale
        s = (R @ vw[n]) @ vl[n] - (0.0 if margin is None else margin[n])
        out.append(np.logaddexp(0.0, -s / tau))  # -log sig(s / tau)
    return np.array(out)


def case(seed, k, with_lam, with_margin, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    vw = torch.randn(5, 2 * k, generator=g, dtype=dtype) * 2
    vl = torch.randn(5, 2 * k, generator=g, dtype=dtype) * 2
    lam = k * torch.softmax(torch.randn(5, k, generator=g, dtype=dtype), -1) if with_lam else None
    margin = torch.randn(5, generator=g, dtype=dtype) if with_margin else None
    return vw, vl, lam, margin


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k,with_lam,with_margin,tau", [(1, False, False, 0.1), (2, True, False, 1.0),
                                                        (3, True, True, 0.5), (4, False, True, 0.1)])
def test_loss_against_numpy(seed, k, with_lam, with_margin, tau):
    vw, vl, lam, margin = case(seed, k, with_lam, with_margin)
    got = gpm_loss(vw, vl, lam, tau, margin).numpy()
    want = np_gpm_loss(vw.numpy(), vl.numpy(), None if lam is None else lam.numpy(), tau,
                       None if margin is None else margin.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_loss_at_extreme_scores_is_finite_and_exact():
    vw = torch.tensor([[30.0, 0.0], [0.0, 30.0]], dtype=torch.float64)
    vl = torch.tensor([[0.0, 30.0], [30.0, 0.0]], dtype=torch.float64)  # s = +900 and -900
    got = gpm_loss(vw, vl, tau=0.1)
    torch.testing.assert_close(got, torch.tensor([0.0, 9000.0], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(gpm_loss(vw.float(), vl.float(), tau=0.1)).all()


@pytest.mark.parametrize("k,with_lam", [(1, False), (2, True), (3, True)])
def test_gradcheck(k, with_lam):
    vw, vl, lam, margin = case(7, k, with_lam, True)
    inputs = [vw.requires_grad_(), vl.requires_grad_()] + ([lam.requires_grad_()] if with_lam else [])

    def f(*xs):
        return gpm_loss(xs[0], xs[1], xs[2] if with_lam else None, 0.5, margin)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_dimension_two_with_fixed_operator_is_bradley_terry():
    """v_y = (r(y), 1): s(y_w > y_l) = r_w - r_l, so the GPM loss is the BT loss of r / tau."""
    from dpokit.preference.reward_model import bradley_terry_loss

    g = torch.Generator().manual_seed(3)
    r_w, r_l, m = (torch.randn(8, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    ones = torch.ones_like(r_w)
    for tau in (1.0, 0.1):
        got = gpm_loss(torch.stack([r_w, ones], -1), torch.stack([r_l, ones], -1), tau=tau, margin=m)
        torch.testing.assert_close(got, bradley_terry_loss(r_w / tau, r_l / tau, m / tau))


def test_skew_symmetry():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    lam = torch.rand(6, 2, generator=g, dtype=torch.float64) + 0.1
    p_ab, p_ba = torch.sigmoid(gpm_score(a, b, lam) / 0.1), torch.sigmoid(gpm_score(b, a, lam) / 0.1)
    torch.testing.assert_close(p_ab, 1 - p_ba)
    assert torch.all(gpm_score(a, a, lam) == 0)
    R = skew_operator(4, lam[0], torch.float64)
    torch.testing.assert_close(R.T, -R)
    T = gpm_score_matrix(a, lam[0])
    torch.testing.assert_close(T, -T.T)
    torch.testing.assert_close(T[1, 2], gpm_score(a[1], a[2], lam[0]))


def test_cycle_is_representable():
    """Three unit embeddings 120 degrees apart: A > B, B > C and C > A with the same probability."""
    angles = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64) * torch.pi / 3
    v = torch.stack([torch.cos(angles), torch.sin(angles)], -1)  # A, B, C
    T = gpm_score_matrix(v)
    cycle = torch.stack([T[0, 1], T[1, 2], T[2, 0]])  # s = sin(angle_j - angle_i) = sin(120 degrees)
    torch.testing.assert_close(cycle, torch.full((3,), 3 ** 0.5 / 2, dtype=torch.float64))


def test_bad_dimension():
    with pytest.raises(ValueError, match="even"):
        skew_operator(3)
    with pytest.raises(ValueError, match="tau"):
        gpm_loss(torch.zeros(1, 2), torch.zeros(1, 2), tau=0.0)


# ------------------------------------------------------------------------------------------------
# The model, the judge and the commands
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_classifier(tmp_path_factory, "gpm")


@pytest.mark.parametrize("prompt_head", [False, True])
def test_train_rm_gpm_saves_kind_and_eval_rm_reads_it(tiny, tmp_path, capsys, prompt_head):
    from dpokit.cli import main
    from dpokit.preference import rm_train
    from dpokit.preference.gpm import GPMJudge
    from dpokit.preference.judges import build_judge, judge_group

    init, data = tiny
    out = tmp_path / "gpm"
    argv = ["train-rm", "--kind", "gpm", "--gpm-dim", "4", "--model", init, "--data", data, "--output-dir", str(out),
            "--epochs", "4", "--lr", "3e-3", "--batch-size", "8", "--eval-fraction", "0.25"]
    assert main(argv + (["--gpm-prompt-head"] if prompt_head else [])) == 0
    summary = json.loads((out / "rm_summary.json").read_text())
    assert summary["kind"] == "gpm" and summary["eval_after"]["accuracy"] >= 0.9
    config = json.loads((out / "config.json").read_text())
    assert config["dpokit_reward_model"] == {"kind": "gpm", "dim": 4, "prompt_head": prompt_head, "tau": 0.1,
                                             "normalize": False}
    assert len(config["id2label"]) == (6 if prompt_head else 4) and (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out), "--data", data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "gpm" and report["n"] == 48 and report["accuracy"] >= 0.9
    assert 0 <= report["ece"] <= 1 and 0 <= report["brier"] <= 0.25
    model, tokenizer, kind = rm_train.load(str(out))
    assert kind.name == "gpm"
    # the judge: pairwise preferences are skew-symmetric; a group of K is judged from K passes and
    # agrees with judging every pair
    judge = build_judge({"kind": "gpm", "path": str(out)})
    assert isinstance(judge, GPMJudge)
    a, b = [" good nice", " bad", " fine"], [" awful ugly", " great", " poor"]
    p_ab, p_ba = judge.prefer(["it is"] * 3, a, b), judge.prefer(["it is"] * 3, b, a)
    np.testing.assert_allclose(p_ab, 1 - np.array(p_ba), atol=1e-6)
    responses = [" good", " bad", " nice great", " ugly"]
    scores, win = judge_group(judge, "it is", responses)
    pairwise = judge.prefer(["it is"] * 4, [responses[0]] * 4, responses)
    np.testing.assert_allclose(win[0], pairwise, atol=1e-5)
    np.testing.assert_allclose(np.diag(win), 0.5, atol=1e-6)
    assert scores[0] > scores[1]


def test_eval_rm_of_bradley_terry_model(tiny, tmp_path, capsys):
    from dpokit.cli import main

    init, data = tiny
    out = tmp_path / "bt"
    assert main(["train-rm", "--model", init, "--data", data, "--output-dir", str(out), "--epochs", "2",
                 "--lr", "3e-3"]) == 0
    assert json.loads((out / "config.json").read_text())["dpokit_reward_model"] == {"kind": "bt"}
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out), "--data", data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "bt" and report["n"] == 48 and {"accuracy", "ece", "brier"} <= set(report)


def test_eval_rm_missing_directory(capsys):
    from dpokit.cli import main

    assert main(["eval-rm", "--model", "/nonexistent/rm", "--data", "x.jsonl"]) == 2
    assert "not a reward-model directory" in capsys.readouterr().err


def test_pair_metrics_by_hand():
    from dpokit.preference.rm_kinds import pair_metrics

    m = pair_metrics([0.9, 0.8, 0.3, 0.5], bins=5)
    assert m["n"] == 4 and m["accuracy"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.49 + 0.25) / 4)
    # confidences 0.9, 0.8, 0.7, 0.5 in bins [0.9,1], [0.8,0.9), [0.7,0.8), [0.5,0.6): |0.9-1| + |0.8-1| + |0.7-0| + 0
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.0) / 4)
