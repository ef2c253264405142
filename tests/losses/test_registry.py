"""Registry-wide checks: every loss and modifier is documented, sourced, defaulted, lives in the module
its family names, and runs on random inputs holding only what its Needs declare, with finite values
and gradients."""

import inspect
import pathlib
import sys

import pytest
import torch

import dpokit.losses as L
from dpokit.losses import Needs, get_loss, get_spec, list_losses

from .conftest import make_inputs

ALL = [s.name for s in list_losses()]

EXPECTED = {
    # name: family (= the module under dpokit.losses that holds it)
    "dpo": "pairwise", "ipo": "pairwise", "cdpo": "pairwise", "rdpo": "pairwise", "hinge": "pairwise",
    "exo": "pairwise", "discopop": "pairwise", "sigmoid_norm": "pairwise",
    "fdpo": "divergence",
    "nca": "anchored", "bco_pair": "anchored", "sppo_hard": "anchored", "sppo": "anchored",
    "apo_zero": "anchored", "apo_down": "anchored", "cal_dpo": "anchored",
    "aot": "distributional", "aot_unpaired": "distributional",
    "modpo": "multi_objective", "sem_dpo": "multi_objective",
    "simpo": "reference_free", "cpo": "reference_free", "alphapo": "reference_free",
    "orpo": "reference_free", "asft": "reference_free",
    "rpo": "regularized", "flex_dpo": "regularized", "sft_dpo": "regularized", "phi_dpo": "regularized",
    "sft": "regularized",
    "kto": "unpaired", "bco": "unpaired", "apo_zero_unpaired": "unpaired", "sft_unpaired": "unpaired",
    "tdpo": "token_level", "token_dpo": "token_level", "tab_po": "token_level",
    "xpo": "online", "hypo": "online", "ofs_dpo": "online",
    "plackett_luce": "listwise", "tpo_list": "listwise",
    "reinforce": "policy_gradient", "rloo": "policy_gradient", "grpo": "policy_gradient",
    "copo": "policy_gradient",
    "oprl_prm": "process_reward", "oprl": "process_reward",
    "step_dpo": "step_level",
    "oreo": "value",
    "diffusion_dro": "diffusion", "smpo": "diffusion", "inpo": "diffusion", "diffusion_rankdpo": "diffusion",
    "dense_segment_dpo": "diffusion",
}

TRL_NAMES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
             "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


def test_catalog_is_complete():
    assert set(EXPECTED) <= set(ALL)
    for name, family in EXPECTED.items():
        assert get_spec(name).family == family, name


@pytest.mark.parametrize("name", TRL_NAMES)
def test_trl_names_resolve(name):
    get_spec(name)


def test_unverified_methods_are_not_shipped_under_their_names():
    names = set(ALL) | {a for s in list_losses() for a in s.aliases}
    for banned in ("power", "power_dl", "powerdl", "implicit_reward_bridge"):
        assert banned not in names


def test_partial_entries_are_marked():
    for name in ("cal_dpo", "asft"):
        spec = get_spec(name)
        assert spec.verified == "partial"
        assert "PARTIAL" in inspect.getdoc(spec.impl)


@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    spec = get_spec(name)
    doc = inspect.getdoc(spec.impl)
    assert doc and len(doc.splitlines()) >= 2, "docstring with formula and source"
    assert "Source" in doc or "source" in doc.lower()
    assert spec.source and len(spec.source) > 10
    assert isinstance(spec.defaults, dict)
    assert spec.verified in ("verified", "partial")
    assert isinstance(spec.needs, Needs)
    spec.as_dict()  # serialisable listing for the CLI


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_runs_on_inputs_matching_needs(name, seed):
    loss_fn = get_loss(name)
    inputs = make_inputs(loss_fn.needs, batch=4, T=6, seed=seed)
    for field in ("policy_chosen_logps", "policy_rejected_logps", "policy_logps",
                  "policy_chosen_token_logps", "policy_rejected_token_logps", "list_policy_logps",
                  "list_policy_token_logps"):
        value = getattr(inputs, field)
        if value is not None:
            setattr(inputs, field, value.clone().requires_grad_(True))
    # policy log-probs carried in extras (per-segment diffusion surrogates) are policy outputs too
    policy_extras = [k for k in loss_fn.needs.extras if k.startswith("segment_policy_")]
    for key in policy_extras:
        inputs.extras[key] = inputs.extras[key].clone().requires_grad_(True)
    out = loss_fn(inputs)
    assert out.loss.shape == (4,)
    assert torch.isfinite(out.loss).all(), out.loss
    for key, value in out.metrics.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    out.loss.mean().backward()
    grads = [getattr(inputs, f).grad for f in ("policy_chosen_logps", "policy_rejected_logps", "policy_logps",
                                               "policy_chosen_token_logps", "policy_rejected_token_logps",
                                               "list_policy_logps", "list_policy_token_logps")
             if getattr(inputs, f) is not None and getattr(inputs, f).grad is not None]
    grads += [inputs.extras[k].grad for k in policy_extras if inputs.extras[k].grad is not None]
    assert grads, "the loss must depend on the policy"
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("modifier", [m.name for m in L.list_modifiers()])
def test_modifier_metadata_and_run(modifier):
    spec = L.modifiers.get_modifier_spec(modifier)
    assert spec.family == "modifiers" and spec.impl.__module__ == "dpokit.losses.modifiers"
    assert inspect.getdoc(spec.impl) and spec.source
    loss_fn = L.apply_modifiers(get_loss("dpo"), {modifier: True})
    inputs = make_inputs(loss_fn.needs)
    out = loss_fn(inputs)
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all()


def test_public_helpers_exposed():
    for name in ("apply_modifiers", "build_loss", "list_modifiers", "kto_weight_warning", "diff_token_weights"):
        assert callable(getattr(L, name))


PUBLIC = ("LossInputs", "LossOutput", "Needs", "LossSpec", "ConfiguredLoss", "CompositeLoss", "get_loss", "get_spec",
          "list_losses", "parse_loss_expression", "register_loss", "resolve_name", "pairwise_metrics",
          "reward_metrics", "ModifiedLoss", "apply_modifiers", "build_loss", "list_modifiers", "kto_weight_warning",
          "diff_token_weights")


def test_public_names_are_exported_explicitly():
    for name in PUBLIC:
        assert name in L.__all__ and getattr(L, name) is not None, name
    assert "catalog" not in dir(L) and "dpokit.losses.catalog" not in sys.modules


DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "losses"
SRC = pathlib.Path(L.__file__).resolve().parent


@pytest.mark.parametrize("name", ALL)
def test_family_is_the_module_name(name):
    spec = get_spec(name)
    assert spec.impl.__module__ == f"dpokit.losses.{spec.family}", (name, spec.impl.__module__)


def test_one_docs_page_per_family_module():
    families = {s.family for s in list_losses()} | {"modifiers"}
    assert {m.__name__.rsplit(".", 1)[1] for m in L.FAMILIES} | {"modifiers"} == families
    for family in families:
        assert (SRC / f"{family}.py").is_file(), family
        assert (DOCS / f"{family}.md").is_file(), family
    assert (DOCS / "notation.md").is_file()


@pytest.mark.parametrize("name", ALL)
def test_documented(name):
    spec = get_spec(name)
    page = (DOCS / f"{spec.family}.md").read_text()
    assert f"`{name}`" in page
    for alias in spec.aliases:
        assert f"`{alias}`" in page, alias
    for hp in spec.defaults:
        assert f"`{hp}`" in page, hp


def test_modifiers_documented():
    page = (DOCS / "modifiers.md").read_text()
    for spec in L.list_modifiers():
        assert f"`{spec.name}`" in page
        for hp in spec.defaults:
            assert f"`{hp}`" in page, hp


def test_no_dangling_references_to_files_outside_the_repository():
    for path in sorted(SRC.glob("*.py")) + sorted(DOCS.glob("*.md")):
        text = path.read_text()
        assert "METHODS" not in text and "../shared" not in text, path.name
