"""`dpokit demo` picks its demo from --modality and --task through the registry in dpokit.tasks.demos."""

import argparse

import pytest

from dpokit.tasks import demos


def _args(**overrides):
    base = dict(modality="text", task="parity", output_dir="runs/demo", online=False)
    base.update(overrides)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("overrides, name", [
    ({}, "text"),
    ({"task": "graded"}, "text"),
    ({"task": "arithmetic"}, "arithmetic"),
    ({"modality": "vlm"}, "vlm"),
    ({"modality": "diffusion"}, "diffusion"),
    ({"modality": "diffusion", "task": "arithmetic"}, "diffusion"),
])
def test_pick_demo(overrides, name):
    assert demos.pick_demo(_args(**overrides)) == name


def test_default_output_dir_is_the_demos_own(monkeypatch):
    seen = {}
    monkeypatch.setitem(demos.DEMOS, "vlm", demos.Demo(run=lambda a, h, out: seen.setdefault("out", out) and 0,
                                                        output_dir="runs/demo-vlm"))
    demos.run_demo_command(_args(modality="vlm"), {}, default_output_dir="runs/demo")
    assert seen["out"] == "runs/demo-vlm"
    seen.clear()
    demos.run_demo_command(_args(modality="vlm", output_dir="elsewhere"), {}, default_output_dir="runs/demo")
    assert seen["out"] == "elsewhere"


def test_every_modality_choice_has_a_demo():
    from dpokit.cli import build_parser

    parser = build_parser()
    demo = next(a for a in parser._subparsers._group_actions[0].choices["demo"]._actions if a.dest == "modality")
    assert set(demo.choices) <= set(demos.DEMOS)
