"""Every batch layout against ``padded``: hidden states, log-probs and parameter gradients.

Models are tiny and built in the test (float64 where the attention kernel allows it, so the
tolerances can be tight); groups mix prompt lengths, completion lengths and numbers of
completions (K = 1..4).
"""

import copy

import pytest
import torch

from dpokit.scoring.lm.layouts import LAYOUTS, PackedBatch, build_packed_batch, layout_supported
from dpokit.scoring.lm.projection import project_selected, split_model

from conftest import make_lists

VOCAB = 61
LAYOUT_NAMES = ("padded", "packed", "prompt_shared")
CPU = torch.device("cpu")


def make_model(attn="sdpa", dtype=torch.float64, family="llama", seed=0, **extra):
    import transformers

    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}[family]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[family]
    config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=False, **extra)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    with torch.no_grad():  # larger weights than the default init: attention patterns far from uniform
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.2)
    return model


def make_groups(seed=0, ks=(2, 2, 3, 1, 4, 2), prompt=(1, 9), completion=(1, 7)):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return [(ids(*prompt), [ids(*completion) for _ in range(k)]) for k in ks]


def run_layout(model, name, groups):
    backbone, lm_head = split_model(model)
    hidden, targets, lengths = LAYOUTS[name](backbone, groups, 0, CPU)
    return project_selected(hidden, targets, lm_head, chunk_size=5)["logps"], targets, lengths


def naive_logps(model, groups):
    """One forward per (prompt, completion) row with full logits: the definition."""
    out = []
    for prompt, completions in groups:
        for completion in completions:
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
            logp = logits.log_softmax(-1)[len(prompt) - 1:-1]
            out.append(logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1))
    return torch.cat(out)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_layout_logps_match_the_definition(name):
    model = make_model()
    groups = make_groups()
    logps, targets, lengths = run_layout(model, name, groups)
    expected = naive_logps(model, groups)
    assert lengths == [len(c) for _, cs in groups for c in cs]
    assert targets.tolist() == [t for _, cs in groups for c in cs for t in c]
    torch.testing.assert_close(logps, expected, atol=1e-9, rtol=1e-9)


def assert_grads_close(got, expected, rel):
    """Every gradient within ``rel`` of the largest entry of the expected one. (Llama's RMSNorm
    and rotary tables compute in fp32 even in a float64 model, so gradients agree to ~1e-7
    relative there; a wrong mask or position moves them by 1e-2 and more.)"""
    for name, grad in expected.items():
        scale = grad.abs().max()
        assert scale > 0, name
        err = (got[name] - grad).abs().max()
        assert err <= rel * scale, f"{name}: max error {float(err):.3e} vs scale {float(scale):.3e}"


@pytest.mark.parametrize("attn,dtype,tol,rel", [("sdpa", torch.float64, 1e-9, 1e-5), ("eager", torch.float32, 2e-5, 1e-4)])
@pytest.mark.parametrize("name", ["packed", "prompt_shared"])
def test_layout_matches_padded_values_and_parameter_gradients(name, attn, dtype, tol, rel):
    model = make_model(attn, dtype)
    groups = make_groups(seed=1)
    weights = torch.randn(sum(len(cs) for _, cs in groups), generator=torch.Generator().manual_seed(0)).to(dtype)

    def grads(layout):
        model.zero_grad()
        logps, _, lengths = run_layout(model, layout, groups)
        sums = torch.stack([piece.sum() for piece in logps.split(lengths)])
        (weights * sums).sum().backward()
        return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    expected_logps, expected_grads = grads("padded")
    logps, got_grads = grads(name)
    torch.testing.assert_close(logps, expected_logps, atol=tol, rtol=tol)
    assert_grads_close(got_grads, expected_grads, rel)


@pytest.mark.parametrize("ks", [(1,), (2,), (3, 3), (4, 1, 2), (5,)])
def test_k_response_groups(ks):
    model = make_model()
    groups = make_groups(seed=sum(ks), ks=ks)
    expected = naive_logps(model, groups)
    for name in LAYOUT_NAMES:
        logps, _, lengths = run_layout(model, name, groups)
        assert len(lengths) == sum(ks)
        torch.testing.assert_close(logps, expected, atol=1e-9, rtol=1e-9, msg=name)


def test_prompt_shared_mask_and_positions_by_hand():
    # prompt [11, 12], completions [21, 22] and [31]: one row "11 12 21 22 31"
    batch = build_packed_batch([([11, 12], [[21, 22], [31]])], pad_id=0, share_prompt=True, device=CPU)
    assert batch.input_ids.tolist() == [[11, 12, 21, 22, 31]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2]]  # every branch continues from the prompt end
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the second completion sees the prompt and itself, not the first completion
    ], dtype=torch.bool)
    assert torch.equal(batch.attention_mask()[0, 0], expected)
    # the prompt's last position (1) predicts the first token of both completions
    assert batch.select.tolist() == [1, 2, 1]
    assert batch.targets.tolist() == [21, 22, 31]
    assert batch.lengths == [2, 1]


def test_packed_rows_are_block_diagonal_and_restart_positions():
    groups = [([1, 2, 3], [[4, 5], [6]]), ([7], [[8, 9, 10, 11]])]
    batch = build_packed_batch(groups, pad_id=0, share_prompt=False, device=CPU)
    capacity = max(len(p) + len(c) for p, cs in groups for c in cs)
    assert batch.input_ids.shape[1] == capacity and batch.input_ids.shape[0] < 4
    mask = batch.attention_mask()[:, 0]
    for r in range(batch.input_ids.shape[0]):
        seq = batch.sequence_ids[r]
        for q in range(capacity):
            for k in range(capacity):
                same = bool(seq[q] == seq[k]) and int(seq[q]) >= 0 and k <= q
                assert bool(mask[r, q, k]) == (same or q == k)
            if seq[q] >= 0:
                first = int((seq == seq[q]).nonzero()[0])
                assert int(batch.position_ids[r, q]) == q - first
    # every real token appears exactly once
    tokens = sorted(batch.input_ids[batch.sequence_ids >= 0].tolist())
    assert tokens == sorted(t for p, cs in groups for c in cs for t in p + c)


def test_one_row_packing_from_position_ids_alone():
    """The flash-attention route: one row, no mask, restarting position ids. transformers turns the
    position ids into a block-diagonal mask for SDPA as well, so this path is checked on CPU."""
    from transformers.masking_utils import find_packed_sequence_indices

    model = make_model()
    backbone, lm_head = split_model(model)
    groups = make_groups(seed=4)
    batch = build_packed_batch(groups, 0, share_prompt=False, device=CPU, capacity=None)
    assert batch.input_ids.shape[0] == 1 and bool((batch.sequence_ids >= 0).all())  # no padding at all
    found = find_packed_sequence_indices(batch.position_ids)
    assert torch.equal(found, batch.sequence_ids - batch.sequence_ids[0, 0])
    hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    logps = project_selected(hidden[0].index_select(0, batch.select), batch.targets, lm_head)["logps"]
    torch.testing.assert_close(logps, naive_logps(model, groups), atol=1e-9, rtol=1e-9)


def test_a_wrong_mask_is_detected(monkeypatch):
    """Negative control: let branches see each other and the comparison must fail."""
    model = make_model()
    groups = make_groups(seed=2)
    expected, _, _ = run_layout(model, "padded", groups)
    original = PackedBatch.attention_mask

    def leaky(self, kind="bool", dtype=torch.float32, window=None):
        saved = self.branch_ids
        self.branch_ids = torch.zeros_like(saved)
        try:
            return original(self, kind, dtype, window)
        finally:
            self.branch_ids = saved

    monkeypatch.setattr(PackedBatch, "attention_mask", leaky)
    leaked, _, _ = run_layout(model, "prompt_shared", groups)
    assert (leaked - expected).abs().max() > 1e-3


@pytest.mark.parametrize("family,extra", [
    ("mistral", {"sliding_window": 4}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
               "layer_types": ["full_attention", "sliding_attention"]}),
])
def test_sliding_window_models(family, extra):
    model = make_model(family=family, **extra)
    ok, reason = layout_supported(model, "prompt_shared")
    assert ok and "sliding window" in reason
    groups = make_groups(seed=5, prompt=(5, 9), completion=(3, 7))  # longer than the window
    expected, _, _ = run_layout(model, "padded", groups)
    assert (expected - run_layout(make_model(family=family), "padded", groups)[0]).abs().max() > 1e-6  # window bites
    for name in ("packed", "prompt_shared"):
        torch.testing.assert_close(run_layout(model, name, groups)[0], expected, atol=1e-9, rtol=1e-9, msg=name)


def test_capability_check_and_fallback():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = make_model()
    for name in LAYOUT_NAMES:
        ok, reason = layout_supported(model, name, probe=True)
        assert ok, reason
    assert layout_supported(model, "nonsense")[0] is False

    flash = copy.deepcopy(model)
    flash.config._attn_implementation = "flash_attention_2"
    assert layout_supported(flash, "packed")[0] is True
    ok, reason = layout_supported(flash, "prompt_shared")
    assert not ok and "no custom attention mask" in reason

    hybrid = copy.deepcopy(model)
    hybrid.config.layer_types = ["linear_attention", "full_attention"]
    ok, reason = layout_supported(hybrid, "packed")
    assert not ok and "linear_attention" in reason

    # an attention kernel registered by the user: works with padded, takes no custom mask
    AttentionInterface.register("dpokit_test_kernel", sdpa_attention_forward)
    custom = copy.deepcopy(model)
    custom.config._attn_implementation = "dpokit_test_kernel"
    ok, reason = layout_supported(custom, "prompt_shared")
    assert not ok and "dpokit_test_kernel" in reason
    groups = make_groups(seed=6)
    with pytest.warns(RuntimeWarning, match="using 'padded'"):
        got, _, _ = run_layout(custom, "prompt_shared", groups)
    torch.testing.assert_close(got, run_layout(model, "padded", groups)[0], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = make_model()
    model.train()
    groups = make_groups(seed=7)

    def grads():
        model.zero_grad()
        logps, _, _ = run_layout(model, name, groups)
        logps.sum().backward()
        return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_logps, plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    ckpt_logps, ckpt = grads()
    torch.testing.assert_close(ckpt_logps, plain_logps, atol=1e-12, rtol=1e-12)
    assert_grads_close(ckpt, plain, 1e-9)


@pytest.mark.slow  # torch.compile: about 10 s on 2 CPU cores
def test_compiled_model_runs_every_layout():
    """``torch.compile(model)`` (as the trainer does for model.compile) is unwrapped by split_model
    and the decoder layers compiled in place; the ``eager`` backend keeps the test fast on CPU while
    still tracing every layout's masks and position ids through dynamo."""
    from dpokit.scoring.lm.projection import compile_backbone

    model = make_model(dtype=torch.float32)
    groups = make_groups(seed=8)
    expected = {name: run_layout(model, name, groups)[0].detach() for name in LAYOUT_NAMES}
    compiled = copy.deepcopy(model)
    compile_backbone(compiled, backend="eager")
    wrapped = torch.compile(compiled, backend="eager")
    for name in LAYOUT_NAMES:
        got, _, _ = run_layout(wrapped, name, groups)
        got.sum().backward()
        torch.testing.assert_close(got.detach(), expected[name], atol=1e-5, rtol=1e-5, msg=name)
    layer = split_model(wrapped)[0].layers[0]
    assert getattr(layer, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("name", ["packed", "prompt_shared"])
def test_engine_loss_inputs_agree_across_layouts(name, tokenizer):
    """Through the engine: policy and reference log-probs and the per-token statistics."""
    from dpokit.data import collate
    from dpokit.data.tokenize import TokenizedExample
    from dpokit.scoring.lm.engine import LogProbEngine
    from dpokit.losses import Needs
    from dpokit.reference import ModelReference

    policy, reference = make_model(seed=0), ModelReference(make_model(seed=1))
    groups = make_groups(seed=9, ks=(2, 2, 2, 2))
    batch = collate([TokenizedExample(i, p, cs) for i, (p, cs) in enumerate(groups)])
    needs = Needs(token_stats=("entropy", "sum_p2", "ref_kl"))
    expected = LogProbEngine(needs, 0, "padded", chunk_size=4).loss_inputs(policy, batch, reference)
    got = LogProbEngine(needs, 0, name, chunk_size=4).loss_inputs(policy, batch, reference)
    for field in ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                  "reference_rejected_logps", "policy_chosen_token_logps", "chosen_token_mask"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), atol=1e-9, rtol=1e-9, msg=field)
    for key, value in expected.token_stats.items():
        torch.testing.assert_close(got.token_stats[key], value, atol=1e-9, rtol=1e-9, msg=key)


@pytest.mark.slow  # three training runs
def test_trainer_runs_give_the_same_weights_with_every_layout(tiny_model_dir, pairs_file, tmp_path):
    """End to end through the trainer (with gradient checkpointing from the config): two optimizer
    steps of DPO give the same losses and final weights whatever the layout."""
    from safetensors.torch import load_file

    from conftest import train_config
    from dpokit.config import from_dict
    from dpokit.train import Trainer
    from dpokit.train.logging import read_metrics

    results = {}
    for name in LAYOUT_NAMES:
        raw = train_config(tiny_model_dir, pairs_file, tmp_path / name, model={"gradient_checkpointing": True},
                           train={"max_steps": 2, "layout": name, "lr": 1e-2})
        Trainer(from_dict(raw)).fit()
        losses = [row["loss"] for row in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in row]
        results[name] = (losses, load_file(str(tmp_path / name / "final" / "model.safetensors")))
    losses, weights = results["padded"]
    for name in ("packed", "prompt_shared"):
        torch.testing.assert_close(results[name][0], losses, atol=1e-5, rtol=1e-5, msg=name)
        for key, value in weights.items():
            torch.testing.assert_close(results[name][1][key], value, atol=2e-5, rtol=1e-4, msg=f"{name} {key}")


def test_layouts_agree_on_lists(tiny_model, tokenizer):
    from dpokit.data import collate, tokenize_examples
    from dpokit.data.formats import parse_list
    from dpokit.losses import Needs
    from dpokit.scoring.lm.engine import LogProbEngine

    rows = make_lists(6, seed=5)
    parsed = [parse_list(f"r{i}", r) for i, r in enumerate(rows)]
    batch = collate(tokenize_examples(parsed, tokenizer, max_length=64)[0], "lists")
    outputs = {}
    for layout in ("padded", "packed", "prompt_shared"):
        engine = LogProbEngine(Needs(reference=False, data="lists"), tokenizer.pad_token_id, layout=layout)
        inputs = engine.loss_inputs(tiny_model, batch)
        outputs[layout] = inputs
        assert inputs.list_mask.sum().item() == sum(len(g[1]) for g in batch.groups)
        torch.testing.assert_close(inputs.list_scores, batch.scores)
    for layout in ("packed", "prompt_shared"):
        torch.testing.assert_close(outputs[layout].list_policy_logps, outputs["padded"].list_policy_logps,
                                   atol=2e-5, rtol=1e-5)
        # per-token list log-probs (token-level GRPO): consistent with the sums, same in every layout
        tok, tmask = outputs[layout].list_policy_token_logps, outputs[layout].list_token_mask
        torch.testing.assert_close(tok.sum(-1), outputs[layout].list_policy_logps, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tmask.sum(-1).to(tok.dtype), outputs[layout].list_lengths)
        assert not tmask[~outputs[layout].list_mask].any()
