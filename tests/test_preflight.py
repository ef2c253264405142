"""Run checks that span config sections (dpokit.preflight): data kind, pair building, label noise, curriculum."""

import pytest

from dpokit.config import ConfigError
from dpokit.preflight import checked_config

from conftest import lists_config


@pytest.mark.parametrize("change, message", [
    ({"data": {"kind": "pairs"}, "loss": {"name": "plackett_luce"}}, "set data.kind: lists"),
    ({"data": {"pair_builder": "margin"}}, "min_margin > 0"),
    ({"data": {"label_noise": 0.7}}, "label_noise"),
    ({"data": {"curriculum": {"stages": 0}}}, "curriculum.stages"),
    ({"data": {"curriculum": {"stage": 2}}}, "unknown key"),
    ({"data": {"curriculum": {"stages": 2}}, "loss": {"name": "plackett_luce"}}, "pairwise loss"),
    ({"data": {"curriculum": {"stages": 2}}, "reference": {"precompute": True}}, "separate reference"),
    ({"data": {"pair_builder": "random"}}, "pair_builder"),
])
def test_list_config_errors(tiny_model_dir, lists_file, tmp_path, change, message):
    raw = lists_config(tiny_model_dir, lists_file, tmp_path / "bad")
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        checked_config(raw)
