"""Regression tests for bugs found by breaking things on purpose (odd inputs, damaged files)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from PIL import Image

from viq.config import override
from viq.data.llava import load_llava
from viq.data.policy import BadSamplePolicy
from viq.data.shards import ShardError, write_shards
from viq.data.sources import TarSource as ShardSource
from viq.model.viq import ViQModel
from viq.presets import tiny

CONV = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]


@pytest.fixture(scope="module")
def model() -> ViQModel:
    torch.manual_seed(0)
    return ViQModel(tiny()).eval()


def test_embed_refuses_codes_outside_the_codebook(model):
    k = model.head.quantizer.codebook_size  # 1000 for tiny's levels (8, 5, 5, 5)
    assert model.embed([torch.full((2, 2, 4), k - 1)]).tokens.shape == (4, 32)
    assert model.embed([torch.zeros(1, 2, 4, dtype=torch.uint16)]).tokens.shape == (2, 32)
    for bad in (torch.full((2, 2, 4), k), torch.full((2, 2, 4), -1), torch.rand(2, 2, 4),
                torch.full((1, 1, 4), 65535, dtype=torch.uint16)):
        with pytest.raises(ValueError, match=r"codes 0 .*not integers in \[0, 1000\)"):
            model.embed([bad])


def test_encoder_names_an_empty_image(model):
    with pytest.raises(ValueError, match="image 1 is empty"):
        model.encode([torch.zeros(3, 16, 16), torch.zeros(3, 0, 16)])


def test_from_pretrained_names_a_damaged_weights_file(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors"):
        ViQModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("assignment,field", [("encoder.ln_eps=nan", "encoder.ln_eps"),
                                              ("encoder.ln_eps=-1", "encoder.ln_eps"),
                                              ("image.max_image_pixels=0",
                                               "image.max_image_pixels")])
def test_override_rejects_values_that_break_later(assignment, field):
    with pytest.raises(ValueError, match=f"config field '{field}'"):
        override(tiny(), [assignment])


def test_llava_non_string_image_path_is_a_bad_sample(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    recs = [{"id": "num", "image": {"img_path": 5}, "conversations": CONV},
            {"id": "lst", "image": {"member": ["x"]}, "conversations": CONV},
            {"id": "ok", "image": "a.png", "conversations": CONV}]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    policy = BadSamplePolicy("skip")
    assert [s.key for s in load_llava(tmp_path / "d.json", policy=policy)] == ["ok"]
    assert policy.summary() == {"malformed": 2}


def test_llava_encoding_problems(tmp_path):
    good = json.dumps({"id": "g", "conversations": [{"from": "human", "value": "q"},
                                                    {"from": "gpt", "value": "a"}]})
    (tmp_path / "bom.json").write_text("\ufeff[" + good + "]", encoding="utf-8")
    assert [s.key for s in load_llava(tmp_path / "bom.json")] == ["g"]
    (tmp_path / "mixed.jsonl").write_bytes(("\ufeff" + good + "\n").encode() + b"\xff\xfe\n")
    policy = BadSamplePolicy("skip")
    assert [s.key for s in load_llava(tmp_path / "mixed.jsonl", policy=policy)] == ["g"]
    assert policy.summary() == {"malformed": 1}
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe[]")
    with pytest.raises(ValueError, match=r"bin\.json: not valid JSON"):
        load_llava(tmp_path / "bin.json")


def test_write_shards_non_string_img_path_is_a_bad_sample(tmp_path):
    policy = BadSamplePolicy("skip")
    write_shards([{"id": "x", "image": {"img_path": 5}, "conversations": CONV}], tmp_path,
                 policy=policy)
    assert policy.summary() == {"malformed": 1}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "png")
    return buf.getvalue()


def test_shard_count_disagreeing_with_index_is_named(tmp_path):
    recs = [{"id": f"s{i}", "image": {"data": _png(), "ext": "png"}, "conversations": CONV}
            for i in range(4)]
    write_shards(recs, tmp_path / "a", samples_per_shard=2)
    write_shards(recs[:1], tmp_path / "b", samples_per_shard=2)
    # a shard replaced behind the index's back (e.g. an interrupted rewrite)
    shutil.copy(tmp_path / "b" / "shard-00000.tar", tmp_path / "a" / "shard-00000.tar")
    src = ShardSource(tmp_path / "a")
    with pytest.raises(ShardError, match=r"shard-00000\.tar: holds 1 samples but index"):
        src.get(0, 1)


def test_rewriting_shards_drops_the_stale_index_first(tmp_path):
    recs = [{"id": f"s{i}", "conversations": [{"from": "human", "value": "q"},
                                               {"from": "gpt", "value": "a"}]}
            for i in range(3)]
    write_shards(recs, tmp_path)

    def interrupted():
        yield recs[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(interrupted(), tmp_path)
    assert not (tmp_path / "index.json").exists()


def test_synth_refuses_a_bad_resize_rule_up_front():
    from viq.data.synth import SynthConfig

    assert SynthConfig(n=2, resize="384x32").resize == "384x32"
    with pytest.raises(ValueError, match="resize spec 'bogus'"):
        SynthConfig(n=2, resize="bogus")


def test_cli_without_discrete_codes_is_a_usage_error(tmp_path, capsys):
    from viq.cli import encode
    from viq.cli import try_codec as demo

    Image.new("RGB", (40, 24)).save(tmp_path / "a.png")
    assert demo.main(["--preset", "tiny", "--out", str(tmp_path / "d"),
                      "--set", "head.quantizer=identity"]) == 2
    assert encode.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "e"), "--preset", "tiny",
                        "--random-init", "--quiet", "--set", "head.quantizer=proximal"]) == 2
    err = capsys.readouterr().err
    assert "'identity' gives no discrete codes" in err and "'proximal' gives no" in err
    assert not (tmp_path / "e").exists()


def test_codes_file_with_incomplete_metadata_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    from viq.codes.codesfile import FORMAT, load_codes

    path = tmp_path / "x.codes.safetensors"
    save_file({"codes": torch.zeros(2, 2, 4, dtype=torch.int32)}, str(path), {"format": FORMAT})
    with pytest.raises(ValueError, match="x.codes.safetensors.*lacks levels"):
        load_codes(path)


def test_upper_case_jsonl_is_read_as_lines(tmp_path):
    rec = {"id": "a", "conversations": [{"from": "human", "value": "q"},
                                        {"from": "gpt", "value": "a"}]}
    path = tmp_path / "DATA.JSONL"
    path.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "id": "b"}) + "\n")
    assert [s.key for s in load_llava(path)] == ["a", "b"]
