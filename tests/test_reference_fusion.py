"""reference.kind: fused (InfiFPO): the fusion rule against NumPy, clipping, the identity with plain
DPO when the one source is the initial pivot, config errors, and a tiny run with two sources whose
tokenizers differ from the policy's."""

import math

import numpy as np
import pytest
import torch

from dpokit.config import from_dict
from dpokit.data import PreferencePair, collate, tokenize_examples
from dpokit.errors import ConfigError
from dpokit.losses import LossInputs, Needs, get_loss
from dpokit.preflight import check_run
from dpokit.reference import ModelReference
from dpokit.reference_fusion import FusedReference, Source, fuse_sequence_logps
from dpokit.scoring.lm.engine import LogProbEngine

from conftest import WORDS, make_pairs, train_config, write_jsonl


# ---- the rule, against an independent NumPy computation ---------------------------------------------
def np_fuse(sources, pivot, chosen, fusion, weights=None, clip=True):
    sources, pivot = np.asarray(sources, float), np.asarray(pivot, float)
    n, rows = sources.shape
    out = np.zeros(rows)
    for r in range(rows):
        vals = []
        for i in range(n):
            s = sources[i, r]
            if clip:
                s = max(s, pivot[r]) if chosen[r] else min(s, pivot[r])
            vals.append(s)
        if fusion == "mean":
            w = [1.0 / n] * n if weights is None else weights
            out[r] = sum(wi * v for wi, v in zip(w, vals))
        else:
            best = 0
            for i in range(1, n):
                if abs(vals[i] - pivot[r]) > abs(vals[best] - pivot[r]):
                    best = i
            out[r] = vals[best]
    return out


CASES = [
    ([[-1.0, -3.0, -2.0, -0.5], [-2.5, -1.0, -4.0, -0.1], [-0.2, -2.2, -1.9, -3.0]], [-1.5, -2.0, -2.5, -1.0]),
    ([[-10.0, -12.0], [-9.0, -15.0]], [-11.0, -11.0]),
    ([[-0.3, -0.7, -5.0, -0.01, -2.0, -2.0]], [-0.5, -0.5, -1.0, -0.02, -2.0, -3.0]),
]


@pytest.mark.parametrize("fusion", ["mean", "max_margin"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fusion_rule_matches_numpy(fusion, clip, case):
    sources, pivot = CASES[case]
    chosen = [r % 2 == 0 for r in range(len(pivot))]
    got = fuse_sequence_logps(torch.tensor(sources, dtype=torch.float64), torch.tensor(pivot, dtype=torch.float64),
                              torch.tensor(chosen), fusion, clip=clip)
    np.testing.assert_allclose(got.numpy(), np_fuse(sources, pivot, chosen, fusion, clip=clip), rtol=0, atol=1e-12)


def test_weighted_mean_matches_numpy():
    sources, pivot = CASES[0]
    chosen = [True, False, True, False]
    w = [0.5, 0.3, 0.2]
    got = fuse_sequence_logps(torch.tensor(sources, dtype=torch.float64), torch.tensor(pivot, dtype=torch.float64),
                              torch.tensor(chosen), "mean", weights=w)
    np.testing.assert_allclose(got.numpy(), np_fuse(sources, pivot, chosen, "mean", w), atol=1e-12)


def test_clipping_never_weakens_the_target():
    pivot = torch.tensor([-2.0, -2.0])  # (chosen, rejected)
    chosen = torch.tensor([True, False])
    worse = torch.tensor([[-5.0, -0.5]])  # finds the chosen less likely and the rejected more likely
    better = torch.tensor([[-1.0, -4.0]])
    assert fuse_sequence_logps(worse, pivot, chosen).tolist() == [-2.0, -2.0]  # clipped to the pivot
    assert fuse_sequence_logps(better, pivot, chosen).tolist() == [-1.0, -4.0]  # passes unchanged
    assert fuse_sequence_logps(worse, pivot, chosen, clip=False).tolist() == [-5.0, -0.5]
    # max-margin picks per row: the first source on the chosen row, the second on the rejected row
    two = torch.tensor([[-0.5, -2.5], [-1.5, -6.0]])
    assert fuse_sequence_logps(two, pivot, chosen, "max_margin").tolist() == [-0.5, -6.0]


def test_fused_sigmoid_norm_is_infifpo_eq13():
    """sigmoid_norm with the fused value handed over as f * |y|_p equals Eq. 13 written out in NumPy."""
    rng = np.random.default_rng(0)
    beta, B = 2.5, 5
    pol = rng.normal(-20, 4, (B, 2))  # policy sums (chosen, rejected)
    lp = rng.integers(3, 12, (B, 2)).astype(float)  # policy lengths
    fused_mean = rng.normal(-2, 0.5, (B, 2))  # fused per-token reference values
    inputs = LossInputs(policy_chosen_logps=torch.tensor(pol[:, 0]), policy_rejected_logps=torch.tensor(pol[:, 1]),
                        reference_chosen_logps=torch.tensor(fused_mean[:, 0] * lp[:, 0]),
                        reference_rejected_logps=torch.tensor(fused_mean[:, 1] * lp[:, 1]),
                        chosen_lengths=torch.tensor(lp[:, 0]), rejected_lengths=torch.tensor(lp[:, 1]))
    got = get_loss("sigmoid_norm", beta=beta)(inputs).loss.numpy()
    z = beta * ((pol[:, 0] / lp[:, 0] - fused_mean[:, 0]) - (pol[:, 1] / lp[:, 1] - fused_mean[:, 1]))
    np.testing.assert_allclose(got, np.log1p(np.exp(-z)), rtol=1e-10)


# ---- the reference object ------------------------------------------------------------------------------
def _examples(tokenizer, n=6):
    rows = make_pairs(n, seed=3)
    ex, _ = tokenize_examples([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows], tokenizer,
                              max_length=64)
    return ex


@pytest.mark.parametrize("length_norm", [True, False])
@pytest.mark.parametrize("fusion", ["mean", "max_margin"])
def test_one_source_equal_to_the_pivot_is_plain_dpo(tokenizer, tiny_model, length_norm, fusion):
    import copy

    engine = LogProbEngine(Needs(reference=True), tokenizer.pad_token_id, "padded")
    pivot = ModelReference(tiny_model)
    fused = FusedReference(pivot, tokenizer, [Source(copy.deepcopy(tiny_model), tokenizer)], fusion=fusion,
                           length_norm=length_norm)
    batch = collate(_examples(tokenizer), "pairs")
    plain, mixed = pivot.token_logprobs(engine, batch), fused.token_logprobs(engine, batch)
    torch.testing.assert_close(mixed.sums, plain.sums, rtol=1e-5, atol=1e-5)
    assert torch.equal(mixed.mask, plain.mask)
    policy = plain.sums + torch.linspace(-1, 1, plain.sums.numel())  # any policy values

    def loss(ref):
        return get_loss("dpo", beta=0.3)(LossInputs(policy_chosen_logps=policy[0::2], policy_rejected_logps=policy[1::2],
                                                    reference_chosen_logps=ref.sums[0::2],
                                                    reference_rejected_logps=ref.sums[1::2])).loss

    torch.testing.assert_close(loss(mixed), loss(plain), rtol=1e-5, atol=1e-6)


def test_sources_with_other_tokenizers_are_scored_in_their_own_tokens(tokenizer, tiny_model):
    from dpokit.tiny import tiny_llama, train_tokenizer

    words = train_tokenizer([" ".join(WORDS) + " Question: Answer: \n"], vocab_size=80, word_level=True)
    source = Source(tiny_llama(len(words), hidden_size=16, num_layers=1, num_heads=2, seed=5, tokenizer=words), words)
    batch = collate(_examples(tokenizer, 4), "pairs")
    groups = source.groups(tokenizer, batch.groups)
    for (p, cs), (sp, scs) in zip(batch.groups, groups):
        assert words.decode(sp, skip_special_tokens=True).split() == tokenizer.decode(p, skip_special_tokens=True).split()
        for c, sc in zip(cs, scs):
            assert sc[-1] == words.eos_token_id and c[-1] == tokenizer.eos_token_id
            assert words.decode(sc[:-1]).split() == tokenizer.decode(c[:-1]).split()
    engine = LogProbEngine(Needs(reference=True), tokenizer.pad_token_id, "padded")
    pivot = ModelReference(tiny_model)
    fused = FusedReference(pivot, tokenizer, [source], clip=False, length_norm=True)
    lp, value, _ = fused.sequence_values(engine, batch)
    own = source.engine.token_logprobs(source.model, groups)
    torch.testing.assert_close(value, own.sums / own.lengths)  # the source's mean over its own tokens
    out = fused.token_logprobs(engine, batch)
    torch.testing.assert_close(out.sums, value * lp.lengths)


# ---- config ----------------------------------------------------------------------------------------------
def _cfg(reference, loss=None):
    raw = train_config("org/pivot", "d.jsonl", "out", reference=reference)
    if loss:
        raw["loss"] = loss
    return from_dict(raw)


@pytest.mark.parametrize("reference,loss,message", [
    ({"kind": "fused"}, None, "reference.sources"),
    ({"kind": "fused", "sources": ["org/a", ""]}, None, r"reference.sources\[1\]"),
    ({"kind": "copy", "sources": ["org/a"]}, None, "reference.sources: only read with reference.kind: fused"),
    ({"kind": "auto", "fusion": "max_margin"}, None, "reference.fusion"),
    ({"kind": "fused", "sources": ["org/a", "org/b"], "fusion_weights": [1.0]}, None, "2 sources"),
    ({"kind": "fused", "sources": ["org/a", "org/b"], "fusion_weights": [0.7, 0.7]}, None, "sum to 1"),
    ({"kind": "fused", "sources": ["org/a"], "fusion": "max_margin", "fusion_weights": [1.0]}, None, "fusion 'mean'"),
    ({"kind": "fused", "sources": ["org/a"]}, {"name": "kto"}, "pairwise"),
    ({"kind": "fused", "sources": ["org/a"], "sync_every": 2}, None, "sync_every"),
    ({"kind": "fused", "sources": ["./no/such/dir"]}, None, r"reference.sources\[0\]: no such directory"),
])
def test_bad_fused_configs_name_the_key(reference, loss, message):
    with pytest.raises(ConfigError, match=message):
        check_run(_cfg(reference, loss))


def test_unknown_fusion_is_a_config_error():
    with pytest.raises(ConfigError, match="reference.fusion"):
        _cfg({"kind": "fused", "sources": ["org/a"], "fusion": "median"})


def test_good_fused_config_passes():
    check_run(_cfg({"kind": "fused", "sources": ["org/a", "org/b"], "fusion_weights": [0.25, 0.75]},
                   {"name": "sigmoid_norm", "beta": 2.5}))


# ---- end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_dirs(tmp_path_factory):
    from dpokit.tiny import tiny_llama, train_tokenizer

    corpus = [r["prompt"] + r["chosen"] + r["rejected"] for r in make_pairs(100, seed=7)]
    toks = [train_tokenizer(corpus, vocab_size=270),  # another byte-level BPE
            train_tokenizer([" ".join(WORDS) + " Question: Answer:"], vocab_size=80, word_level=True)]
    dirs = []
    for i, tok in enumerate(toks):
        path = tmp_path_factory.mktemp(f"source{i}")
        tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, seed=10 + i,
                   tokenizer=tok).save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        dirs.append(str(path))
    return dirs


@pytest.mark.parametrize("fusion", ["mean", "max_margin"])
def test_tiny_run_with_two_fused_sources(tiny_model_dir, source_dirs, tmp_path, fusion):
    from dpokit.reference_fusion import FusedReference as Fused
    from dpokit.train.trainer import Trainer

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    raw = train_config(tiny_model_dir, data, tmp_path / "run", loss={"name": "sigmoid_norm", "beta": 2.5},
                       reference={"kind": "fused", "sources": source_dirs, "fusion": fusion},
                       train={"max_steps": 2, "batch_size": 4})
    trainer = Trainer(from_dict(raw))
    assert isinstance(trainer.reference, Fused) and len(trainer.reference.sources) == 2
    assert {type(s.tokenizer.backend_tokenizer.model).__name__ for s in trainer.reference.sources} == \
        {"BPE", "WordLevel"}
    batch = collate(trainer.train_examples[:4], "pairs")
    fused = trainer.reference.token_logprobs(trainer.scorer, batch)
    plain = trainer.reference.pivot.token_logprobs(trainer.scorer, batch)
    assert not torch.allclose(fused.sums, plain.sums)  # the sources change the reference
    per_token = (fused.sums - plain.sums) / plain.lengths
    assert bool((per_token[0::2] >= -1e-5).all()) and bool((per_token[1::2] <= 1e-5).all())  # clipped
    result = trainer.fit()
    assert trainer.state["step"] == 2
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float))


def test_precomputed_fused_reference_is_cached_and_reused(tiny_model_dir, source_dirs, tmp_path):
    from dpokit.reference import CachedReference
    from dpokit.train.trainer import Trainer

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    reference = {"kind": "fused", "sources": source_dirs, "precompute": True, "cache_dir": str(tmp_path / "cache")}
    raw = train_config(tiny_model_dir, data, tmp_path / "run", loss={"name": "dpo", "beta": 0.1},
                       reference=reference, train={"max_steps": 1, "batch_size": 4})
    first = Trainer(from_dict(raw)).reference
    assert isinstance(first, CachedReference) and not first.hit
    live = Trainer(from_dict({**raw, "reference": {**reference, "precompute": False}}))
    batch = collate(live.train_examples[:4], "pairs")
    torch.testing.assert_close(first.token_logprobs(live.scorer, batch).sums,
                               live.reference.token_logprobs(live.scorer, batch).sums, rtol=1e-5, atol=1e-5)
    assert Trainer(from_dict(raw)).reference.hit  # same models and options: read back
    other = Trainer(from_dict({**raw, "reference": {**reference, "fusion": "max_margin"}})).reference
    assert not other.hit and other.path != first.path  # the fusion options are part of the key
