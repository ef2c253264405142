"""Untrusted files: no code runs from weights, configs or data. Weights load through safetensors
(or torch.load(weights_only=True)); trust_remote_code is off unless set; YAML is read with
safe_load; nothing evaluates config strings; names from data or configs cannot send a write
outside the directory it belongs in."""

import ast
import os

import pytest

from dpokit.paths import UnsafePathError, safe_join, safe_name

from conftest import REPO

SRC = os.path.join(REPO, "src", "dpokit")
MODEL_LOADERS = ("AutoModel", "ForCausalLM", "ForSequenceClassification", "PreTrainedModel")


def python_files():
    for root, _, files in os.walk(SRC):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def keyword(call, name):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(tree):
    """(line, why) for every call that could run code from a file or a string."""
    found = []
    kwargs_dicts = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)]
    safetensors_in_kwargs = any(isinstance(k, ast.Constant) and k.value == "use_safetensors" and is_true(v)
                                for d in kwargs_dicts for k, v in zip(d.keys, d.values))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        short = name.rsplit(".", 1)[-1]
        if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            found.append((node.lineno, f"{name}()"))
        if name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load", "dill.loads",
                    "cloudpickle.load", "cloudpickle.loads", "numpy.load", "np.load", "joblib.load"):
            if not (name in ("numpy.load", "np.load") and not is_true(keyword(node, "allow_pickle"))):
                found.append((node.lineno, f"{name}()"))
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            found.append((node.lineno, f"{name}() (use yaml.safe_load)"))
        if name == "torch.load" and not is_true(keyword(node, "weights_only")):
            found.append((node.lineno, "torch.load() without weights_only=True"))
        if is_true(keyword(node, "trust_remote_code")):
            found.append((node.lineno, "trust_remote_code=True"))
        if is_true(keyword(node, "shell")) or name in ("os.system", "os.popen"):
            found.append((node.lineno, f"{name}() through a shell"))
        if short == "from_pretrained" and any(m in name for m in MODEL_LOADERS):
            value = keyword(node, "use_safetensors")
            via_kwargs = any(kw.arg is None for kw in node.keywords) and safetensors_in_kwargs
            if not (is_true(value) or via_kwargs):
                found.append((node.lineno, f"{name}() without use_safetensors=True"))
    return found


def test_source_tree_has_no_unsafe_loading_or_evaluation():
    problems = []
    for path in python_files():
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        for line, why in unsafe_calls(ast.parse(source, path)):
            problems.append(f"{os.path.relpath(path, REPO)}:{line}: {why}")
    assert not problems, "\n".join(problems)


def test_the_scanner_catches_what_it_looks_for():
    bad = ast.parse("\n".join([
        "eval(x)", "exec(x)", "pickle.load(f)", "yaml.load(f)", "torch.load(p)", "torch.load(p, weights_only=False)",
        "AutoTokenizer.from_pretrained(p, trust_remote_code=True)", "subprocess.run(c, shell=True)",
        "AutoModelForCausalLM.from_pretrained(p)", "np.load(p, allow_pickle=True)",
    ]))
    assert len(unsafe_calls(bad)) == 10
    good = ast.parse("\n".join([
        "model.eval()", "torch.load(p, weights_only=True)", "yaml.safe_load(f)",
        "AutoModelForCausalLM.from_pretrained(p, use_safetensors=True)", "AutoTokenizer.from_pretrained(p)",
        "np.load(p)", "from_pretrained(p, trust_remote_code=cfg.trust_remote_code)",
    ]))
    assert unsafe_calls(good) == []


def test_trust_remote_code_defaults_to_false_everywhere():
    import inspect

    from dpokit import models
    from dpokit.cli import build_parser
    from dpokit.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    assert inspect.signature(models.load_tokenizer).parameters["trust_remote_code"].default is False
    for path in python_files():  # every function parameter of that name defaults to False
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code":
                        assert isinstance(default, ast.Constant) and default.value is False, \
                            f"{path}:{node.lineno} {node.name}(trust_remote_code=...)"
    eval_args = build_parser().parse_args(["eval", "--model", "m", "--data", "d"])
    assert getattr(eval_args, "trust_remote_code", False) is False


def test_models_load_only_safetensors(tmp_path, tiny_model):
    """A model directory holding only pickled .bin weights is refused, not unpickled."""
    import torch

    from dpokit.config import ModelConfig
    from dpokit.models import load_causal_lm

    tiny_model.config.save_pretrained(tmp_path)
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_causal_lm(str(tmp_path), ModelConfig(name_or_path=str(tmp_path)))


def test_yaml_configs_cannot_build_objects(tmp_path):
    from dpokit.config import ConfigError, load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "c.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(str(path))
    assert not marker.exists()


def test_loss_expressions_are_parsed_not_evaluated():
    from dpokit.losses import get_loss

    with pytest.raises(ValueError, match="cannot parse loss term"):
        get_loss("dpo + __import__('os').system('true')")


# ---- paths --------------------------------------------------------------------------------------
def test_safe_join_refuses_escapes(tmp_path):
    base = tmp_path / "run"
    base.mkdir()
    assert safe_join(base, "checkpoints", "step-000001") == os.path.join(str(base), "checkpoints", "step-000001")
    assert safe_join(base, "a/b.json") == os.path.join(str(base), "a/b.json")
    for parts in (("..", "x"), ("../x",), ("a/../../x",), ("/etc/passwd",), ("",), ("a\x00b",)):
        with pytest.raises(UnsafePathError):
            safe_join(base, *parts)
    (base / "link").symlink_to(tmp_path)  # a symbolic link inside base that points out of it
    with pytest.raises(UnsafePathError):
        safe_join(base, "link", "x")
    assert safe_name("../../etc/passwd") == "etc_passwd" and safe_name("...") == "item"
    assert safe_name("org/model name:v2") == "org_model_name_v2"


def test_run_outputs_cannot_be_redirected_outside_the_run_directory(tmp_path, tiny_model_dir, pairs_file):
    """final/ made a symbolic link to another place: the trainer refuses to write through it."""
    from dpokit.config import from_dict
    from dpokit.train import Trainer

    from conftest import train_config

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(outside)
    trainer = Trainer(from_dict(train_config(tiny_model_dir, pairs_file, run, train={"max_steps": 1})))
    with pytest.raises(UnsafePathError):
        trainer.fit()  # refused before the first step, not after the last
    assert os.listdir(outside) == [] and not (run / "metrics.jsonl").exists()


def test_reference_cache_file_stays_in_the_cache_directory(tmp_path):
    from dpokit import reference

    source = open(reference.__file__, encoding="utf-8").read()
    assert 'safe_join(cache_dir, f"reference-{key}.safetensors")' in source
    key = reference.CachedReference.cache_key.__doc__ or ""
    assert "hash" in key  # the name is a hex digest, never text from the data
