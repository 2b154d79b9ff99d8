"""`build_model`, the one place a model is built: a checkpoint folder, the release layout and a
config + seed (calibrated) give the expected model, id and store identity."""

import pytest
import torch

from viq.cli.model_args import random_model
from viq.data.bundled import bundled_photo
from viq.data.images import load_for_encoder
from viq.fingerprint import file_sha256, fingerprint
from viq.model.factory import as_built, build_model
from viq.model.release import export_release
from viq.model.viq import WEIGHTS_NAME
from viq.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    return build_model(config=get_preset("tiny"), seed=0, name="tiny")


def _codes(model):
    image = load_for_encoder(bundled_photo(), model.cfg.image)
    return model.encode([image.to(model.dtype)])[0].codes


def test_config_and_seed_give_a_calibrated_seeded_model(tiny):
    assert _codes(tiny.model).unique().numel() > 10  # calibrated: the codes vary
    assert torch.equal(_codes(tiny.model), _codes(random_model("tiny", 0)))
    other = build_model(config=get_preset("tiny"), seed=1, name="tiny")
    assert not torch.equal(_codes(tiny.model), _codes(other.model))
    assert tiny.model_id == "random:tiny:seed0" and not tiny.model.training
    assert list(tiny.identity) == ["kind", "preset", "seed", "overrides", "config_hash", "config"]
    assert tiny.identity["config_hash"] == fingerprint(config=tiny.model.cfg)
    changed = build_model(config=get_preset("tiny"), overrides=["head.levels=8,8,8,6,5"])
    assert changed.model.levels == (8, 8, 8, 6, 5)
    assert changed.identity["overrides"] == ["head.levels=8,8,8,6,5"]


def test_checkpoint_folder(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "ckpt")
    built = build_model(checkpoint=tmp_path / "ckpt")
    assert torch.equal(_codes(built.model), _codes(tiny.model))
    assert built.model_id == str((tmp_path / "ckpt").resolve())
    assert built.identity["kind"] == "checkpoint"
    assert built.identity["weights_sha256"] == file_sha256(tmp_path / "ckpt" / WEIGHTS_NAME)


def test_release_layout(tiny, tmp_path):
    folder = tmp_path / "converted_tiny"
    export_release(tiny.model, folder)
    built = build_model(weights=folder)
    assert torch.equal(_codes(built.model), _codes(tiny.model))
    assert built.model_id == f"release:tiny:{folder.resolve()}"
    assert built.report and built.identity["size"] == "tiny"
    assert built.identity["weights_sha256"] == file_sha256(built.weights_file)
    bf16 = build_model(weights=folder, dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16


def test_exactly_one_source_and_models_made_elsewhere(tiny):
    with pytest.raises(ValueError, match="exactly one"):
        build_model()
    with pytest.raises(ValueError, match="exactly one"):
        build_model(config=get_preset("tiny"), checkpoint="x")
    assert as_built(tiny) is tiny
    made = as_built(tiny.model)
    assert made.identity["kind"] == "model" and len(made.identity["weights_sha256"]) == 64
    assert made.identity == as_built(random_model("tiny", 0)).identity
