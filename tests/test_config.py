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


@pytest.mark.parametrize(("key", "kept", "changed"), [("warp_mode", "bilinear", "bicubic"),
                                                      ("warp_residual", False, True)])
def test_a_retired_key_at_its_remaining_value_is_dropped_and_any_other_value_is_refused(key, kept, changed):
    """World files written before 2026-12-02 store every retired key: with the value whose behaviour
    the model still has they load as before; a model trained with the retired behaviour would run
    differently without it, so it must fail naming the key and the retirement, not load."""
    cfg = model_config("tiny", recycle_warp=True)
    assert config_from_dict({**config_to_dict(cfg), key: kept}) == cfg
    assert model_config("tiny", recycle_warp=True, **{key: kept}) == cfg  # an old command line, same meaning
    with pytest.raises(ValueError, match=rf"{key}={changed!r}, an option retired on 2026-12-02: .*measured worse"):
        config_from_dict({**config_to_dict(cfg), key: changed})
    with pytest.raises(ValueError, match=f"{key}=.*retired"):
        model_config("tiny", **{key: changed})
    with pytest.raises(ValueError, match=f"{key}=1, an option retired"):  # 1 is not False: no loose equality
        config_from_dict({**config_to_dict(cfg), key: 1})
