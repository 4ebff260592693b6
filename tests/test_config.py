"""Configs and the size registry."""

import pytest
import torch

from worldmodel.config import config_from_dict, config_to_dict, model_config, model_sizes
from worldmodel.dit import WorldDiT


def _params_on_meta(name: str) -> int:
    with torch.device("meta"):
        model = WorldDiT(model_config(name))
    return sum(p.numel() for p in model.parameters())


def test_paper_8b_has_about_8b_parameters():
    assert 7.5e9 <= _params_on_meta("paper-8b") <= 8.5e9
    assert model_config("paper-8b").depth == 36


def test_tiny_is_a_few_million_parameters():
    assert 1e6 <= _params_on_meta("tiny") <= 10e6


def test_registry_and_round_trip():
    assert {"tiny", "small", "paper-8b"} <= set(model_sizes())
    cfg = model_config("small", window=7)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_bad_config_keys_and_values_are_named():
    with pytest.raises(KeyError, match="no_such_field"):
        model_config("tiny", no_such_field=1)
    with pytest.raises(KeyError, match="huge"):
        model_config("huge")
    with pytest.raises(ValueError, match="divisible by heads"):
        model_config("tiny", dim=100, heads=7)
    with pytest.raises(ValueError, match="attention_backend"):
        model_config("tiny", attention_backend="magic")
