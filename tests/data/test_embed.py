"""Embedders (hashed n-grams, a Hugging Face model's mean pool) and the Sem-DPO weights built on them."""

import math

import pytest
import torch

from dpokit.data.build import pairs_from_lists, semantic_weights
from dpokit.data.embed import HashedNgramEmbedder, cosine_distance

from .conftest import item


def test_hashed_embedder_and_semantic_weights():
    emb = HashedNgramEmbedder(dim=256)
    e = emb.embed(["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics"])
    assert e.shape == (3, 256)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e, HashedNgramEmbedder(dim=256).embed(
        ["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics"]))
    d = cosine_distance(e[[0, 0]], e[[1, 2]])
    assert d[0] < 0.3 < d[1]
    pairs = pairs_from_lists([item([1.0, 0.0], [" the cat sat on the mat", " no"]),
                              item([1.0, 0.0], [" quantum chromodynamics", " no"])])
    pairs = [p.__class__("the cat sat on a mat", p.chosen, p.rejected, p.extras, p.location) for p in pairs]
    weighted = semantic_weights(pairs, emb, alpha=2.0)
    w = [p.extras["sem_weight"] for p in weighted]
    assert 0 < w[1] < w[0] <= 1
    expected = math.exp(-2.0 * float(cosine_distance(emb.embed(["the cat sat on a mat"]),
                                                     emb.embed([" the cat sat on the mat"]))))
    assert w[0] == pytest.approx(expected, rel=1e-6)


def test_hf_mean_pool_embedder_on_a_local_model(tiny_model, tokenizer):
    from dpokit.data.embed import HFMeanPoolEmbedder

    emb = HFMeanPoolEmbedder(tiny_model, tokenizer)
    e = emb.embed(["the cat sat", "the cat sat", "why how what when"])
    assert e.shape == (3, tiny_model.config.hidden_size)
    torch.testing.assert_close(e[0], e[1])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=1e-5)
