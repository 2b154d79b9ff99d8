"""The typed config system: round trip, overrides, validation messages, presets."""

import json

import pytest

from viq.config import (
    EncoderConfig,
    ImageConfig,
    ModelConfig,
    from_dict,
    load_json,
    override,
    save_json,
    to_dict,
)
from viq.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = get_preset(name)
    path = tmp_path / "config.json"
    save_json(cfg, path)
    assert load_json(type(cfg), path) == cfg
    assert json.loads(path.read_text()) == to_dict(cfg)


def test_override_is_type_checked_and_nested():
    cfg = get_preset("tiny")
    new = override(cfg, ["encoder.depth=5", "encoder.gelu=tanh", "image.resize=384x32",
                         "encoder.pos_antialias=true"])
    assert new.encoder.depth == 5 and new.encoder.gelu == "tanh"
    assert new.image.resize == "384x32" and new.encoder.pos_antialias is True
    assert cfg.encoder.depth == 2  # frozen originals are untouched
    with pytest.raises(ValueError, match="encoder.depth"):
        override(cfg, ["encoder.depth=three"])
    with pytest.raises(ValueError, match="encoder.gelu"):
        override(cfg, ["encoder.gelu=relu"])
    with pytest.raises(ValueError, match="encoder.nope"):
        override(cfg, ["encoder.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        override(cfg, ["encoder.depth"])


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="encoder.heads"):
        EncoderConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="image.resize"):
        ImageConfig(resize="big")
    with pytest.raises(ValueError, match="image.min_pixels"):
        ImageConfig(min_pixels=100, max_pixels=10)


def test_from_dict_rejects_unknown_keys_and_bad_types():
    with pytest.raises(ValueError, match="encoder.widht"):
        from_dict(ModelConfig, {"encoder": {"widht": 3}})
    with pytest.raises(ValueError, match="encoder.width"):
        from_dict(ModelConfig, {"encoder": {"width": "wide"}})
    with pytest.raises(ValueError, match="encoder.qkv_bias"):
        from_dict(ModelConfig, {"encoder": {"qkv_bias": "maybe"}})
