"""Entropy packing of codes (`viq.codes.pack`, `viq.codes.packfile`): lossless on every FSQ preset,
edge values included; damaged data is an error, never wrong codes."""

import numpy as np
import pytest
import torch

from viq.codes.codesfile import CodesFile
from viq.codes.pack import (
    Layout,
    from_digits,
    method_of,
    pack_all,
    pack_codes,
    to_digits,
    unpack_codes,
)
from viq.codes.packfile import load_packed, read_packed, save_packed
from viq.model.viq import ImageCodes
from viq.quant.fsq import FSQ_PRESETS

LEVELS = {**FSQ_PRESETS, "16kv2": (2,) * 14, "256k": (8,) * 6}  # + binary digits, K > 65,536


def _cases(levels, rng):
    k = int(np.prod(levels))
    smooth = (np.add.outer(np.arange(20), np.arange(30))[..., None] * 37 + np.arange(4)) % k
    return {
        "zeros": np.zeros((5, 7, 4), np.int64),
        "max": np.full((5, 7, 4), k - 1, np.int64),
        "1x1": rng.integers(0, k, (1, 1, 4)),
        "empty": np.zeros((0, 0, 4), np.int64),
        "random": rng.integers(0, k, (9, 13, 4)),
        "smooth": smooth.astype(np.int64),
        "large": rng.integers(0, k, (64, 96, 4)) if levels == FSQ_PRESETS["64k"] else
        rng.integers(0, k, (3, 3, 4)),
    }


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_every_method_is_lossless_on_every_preset_and_edge_value(name):
    levels = LEVELS[name]
    rng = np.random.default_rng(0)
    for case, codes in _cases(levels, rng).items():
        layout = Layout(codes.shape[:2], 4, levels)
        blobs = pack_all(codes, levels)
        assert set(blobs) == {"raw", "zstd", "fsq"}
        for method, blob in blobs.items():
            assert method_of(blob) == method
            back = unpack_codes(blob, layout)
            assert back.dtype == np.int64 and back.shape == codes.shape, (case, method)
            assert np.array_equal(back, codes), (name, case, method)
        auto = pack_codes(torch.from_numpy(codes), levels)  # torch input works too
        assert len(auto) == min(len(b) for b in blobs.values())
        assert np.array_equal(unpack_codes(auto, layout), codes)


def test_digits_follow_the_spec_index_math():
    levels = (8, 8, 8, 6, 5)  # docs/design.md B2.3 example: basis [1, 8, 64, 512, 3072]
    idx = np.array([0, 1, 8, 64, 512, 3072, 15359])
    d = to_digits(idx, levels)
    assert d[1].tolist() == [1, 0, 0, 0, 0] and d[4].tolist() == [0, 0, 0, 1, 0]
    assert d[-1].tolist() == [7, 7, 7, 5, 4]
    assert np.array_equal(from_digits(d, levels), idx)


def test_raw_is_uint16_little_endian_and_int32_above_65536():
    c = np.array([[[1, 258, 0, 63999]]])
    assert pack_codes(c, FSQ_PRESETS["64k"], "raw")[1:] == c.astype("<u2").tobytes()
    big = np.array([[[70000, 0, 1, 2]]])
    assert pack_codes(big, (8,) * 6, "raw")[1:] == big.astype("<i4").tobytes()


def test_fsq_model_compresses_structured_codes():
    # Synthetic structured codes: a smooth field, each slot a small offset of its neighbour's
    # digits — the kind of redundancy trained codes have; the adaptive model must find it.
    levels = FSQ_PRESETS["64k"]
    rng = np.random.default_rng(1)
    base = (np.add.outer(np.arange(32) // 4, np.arange(48) // 6) % 5)[..., None, None]
    digits = np.clip(base + rng.integers(0, 2, (32, 48, 4, 6)), 0, np.array(levels) - 1)
    codes = from_digits(digits, levels)
    blobs = pack_all(codes, levels)
    bits = {m: 8 * len(b) / codes.size for m, b in blobs.items()}
    assert bits["fsq"] < 16 / 1.25 and bits["fsq"] < bits["zstd"], bits


def test_out_of_range_and_damaged_blobs_are_errors():
    levels = FSQ_PRESETS["2k"]
    with pytest.raises(ValueError, match="outside"):
        pack_codes(np.full((1, 1, 4), 2304), levels)
    with pytest.raises(ValueError, match="outside"):
        pack_codes(np.full((1, 1, 4), -1), levels)
    codes = np.random.default_rng(2).integers(0, 2304, (4, 4, 4))
    layout = Layout((4, 4), 4, levels)
    with pytest.raises(ValueError, match="method byte"):
        unpack_codes(b"\x09" + pack_codes(codes, levels)[1:], layout)
    with pytest.raises(ValueError):
        unpack_codes(pack_codes(codes, levels, "zstd")[:-3], layout)
    with pytest.raises(ValueError, match="bytes of codes"):
        unpack_codes(pack_codes(codes, levels, "raw"), Layout((4, 5), 4, levels))
    with pytest.raises(ValueError, match="unknown method"):
        pack_codes(codes, levels, "gzip")


def _codes_file(codes, levels):
    return CodesFile(ImageCodes(torch.as_tensor(codes), levels), "a/b.jpg", (96, 64), (300, 200),
                     "random:tiny:seed0")


@pytest.mark.parametrize("method", ["auto", "fsq", "zstd", "raw"])
def test_viqz_file_round_trip(tmp_path, method):
    levels = FSQ_PRESETS["16k"]
    codes = np.random.default_rng(3).integers(0, 15360, (4, 6, 4))
    path, blob = save_packed(tmp_path / "x.viqz", _codes_file(codes, levels), method)
    header, stored = read_packed(path)
    assert stored == blob and header["grid"] == (4, 6) and header["levels"] == levels
    cf = load_packed(path)
    assert torch.equal(cf.codes.codes, torch.as_tensor(codes))
    assert (cf.source, cf.image_size, cf.original_size) == ("a/b.jpg", (96, 64), (300, 200))


def test_viqz_damage_is_caught_by_the_crc(tmp_path):
    levels = FSQ_PRESETS["4k"]
    codes = np.random.default_rng(4).integers(0, 4096, (8, 8, 4))
    path, _ = save_packed(tmp_path / "x.viqz", _codes_file(codes, levels), "raw")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # a flipped bit inside the codes: still decodes, to wrong codes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        load_packed(path)
    (tmp_path / "y.viqz").write_bytes(b"PK\x03\x04not ours")
    with pytest.raises(ValueError, match="magic"):
        load_packed(tmp_path / "y.viqz")
