"""Metric functions against hand computations on tiny inputs."""

import math

import pytest
import torch

from dpokit.eval.metrics import (distinct_n, fisher_rao, margin_distribution, mean_and_stderr, next_token_kl,
                                 probe_accuracy, spectral_contraction, topk_indicators, win_rate)


def test_distinct_n_on_known_strings():
    texts = ["a b c", "a b d"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # {a, b, c, d} of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # {a b, b c, b d} of 4 bigrams
    assert distinct_n(["x x x x"], 2) == pytest.approx(1 / 3)
    assert distinct_n(["a", ""], 2) == 0.0  # no bigram at all; n-grams never cross texts
    assert distinct_n(["a", "b"], 2) == 0.0


def test_topk_entropy_of_uniform_is_log2_k_and_mass_is_k_over_v():
    logp = torch.full((3, 50), -math.log(50.0), dtype=torch.float64)
    mass, entropy = topk_indicators(logp, k=10)
    assert torch.allclose(mass, torch.full((3,), 10 / 50, dtype=torch.float64))
    assert torch.allclose(entropy, torch.full((3,), math.log2(10), dtype=torch.float64))


def test_topk_indicators_on_a_known_distribution():
    # 12 tokens: two of 0.3, ten of 0.04 -> top-10 = 0.3, 0.3 and eight of 0.04
    p = torch.tensor([0.3, 0.3] + [0.04] * 10, dtype=torch.float64)
    mass, entropy = topk_indicators(p.log()[None], k=10)
    assert float(mass) == pytest.approx(0.6 + 8 * 0.04)
    q = torch.tensor([0.3, 0.3] + [0.04] * 8, dtype=torch.float64) / (0.6 + 8 * 0.04)  # renormalised
    assert float(entropy) == pytest.approx(float(-(q * q.log2()).sum()))
    # k at least the vocabulary: mass 1 and the plain Shannon entropy in bits
    small = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    mass, entropy = topk_indicators(small.log(), k=10)
    assert float(mass) == pytest.approx(1.0) and float(entropy) == pytest.approx(1.5)
    # a one-hot distribution has zero top-k entropy
    _, entropy = topk_indicators(torch.log_softmax(torch.tensor([[60.0] + [0.0] * 20]), -1), k=10)
    assert float(entropy) == pytest.approx(0.0, abs=1e-6)


def test_next_token_kl_by_hand():
    p = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(next_token_kl(p.log(), q.log())) == pytest.approx(expected)
    assert float(next_token_kl(p.log(), p.log())) == 0.0


def test_fisher_rao_distance():
    p = torch.tensor([[1.0, 1e-30], [0.5, 0.5], [1.0, 1e-30]], dtype=torch.float64).log()
    q = torch.tensor([[1.0, 1e-30], [1e-30, 1.0], [0.5, 0.5]], dtype=torch.float64).log()
    d = fisher_rao(p, q)
    assert float(d[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(d[1]) == pytest.approx(2 * math.acos(math.sqrt(0.5)), abs=1e-6)  # BC = sqrt(0.5)
    assert float(d[2]) == pytest.approx(math.pi / 2, abs=1e-6)
    disjoint = fisher_rao(torch.tensor([[0.0, -1e4]]), torch.tensor([[-1e4, 0.0]]))
    assert float(disjoint) == pytest.approx(math.pi)


def test_spectral_contraction_recovers_a_power_law_exponent():
    gen = torch.Generator().manual_seed(0)
    n, d, alpha = 80, 40, 1.5
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    s = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    h = u @ torch.diag(s) @ v.T
    assert spectral_contraction(h, center=False) == pytest.approx(alpha, abs=1e-6)
    flat = u @ v.T  # all singular values equal: exponent 0
    assert spectral_contraction(flat, center=False) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(spectral_contraction(torch.ones(2, 2)))


def test_probe_accuracy_separable_vs_random():
    gen = torch.Generator().manual_seed(0)
    n = 40
    labels = torch.cat([torch.ones(n), torch.zeros(n)])
    groups = torch.cat([torch.arange(n), torch.arange(n)])
    x = torch.randn(2 * n, 8, generator=gen)
    separable = x.clone()
    separable[:, 0] = torch.where(labels == 1, 3.0, -3.0) + torch.rand(2 * n, generator=gen)  # a gap of 5
    assert probe_accuracy(separable, labels, groups) == 1.0
    random_acc = probe_accuracy(x, labels, groups)
    assert 0.2 <= random_acc <= 0.8
    assert math.isnan(probe_accuracy(x[:2], labels[:2], torch.zeros(2)))


def test_win_rate_and_margin_distribution():
    # prompt 1: 1 vs {0, 1} -> (1 + 0.5) / 2; prompt 2: 0 vs {1} -> 0
    assert win_rate([[1.0], [0.0]], [[0.0, 1.0], [1.0]]) == pytest.approx((0.75 + 0.0) / 2)
    assert win_rate([[2.0, 2.0]], [[2.0, 2.0]]) == 0.5
    dist = margin_distribution(torch.arange(10, dtype=torch.float32), bins=5)
    assert dist["quantiles"]["q50"] == pytest.approx(4.5)
    assert dist["quantiles"]["q05"] == pytest.approx(0.45)
    assert dist["histogram"]["counts"] == [2, 2, 2, 2, 2]
    assert dist["histogram"]["edges"][0] == 0.0 and dist["histogram"]["edges"][-1] == 9.0
    same = margin_distribution(torch.zeros(4))
    assert sum(same["histogram"]["counts"]) == 4
    mean, stderr = mean_and_stderr([1.0, 3.0])
    assert mean == 2.0 and stderr == pytest.approx(math.sqrt(2.0) / math.sqrt(2.0))
