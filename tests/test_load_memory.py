"""Loading published weights into bf16 streams tensor by tensor: the peak resident memory
of the load, measured in a fresh subprocess, stays under 1.2× the bf16 model's size; the loaded
tensors equal the file's, cast; damaged or foreign files get a clear message."""

from __future__ import annotations

import argparse

import pytest
import torch

from viq.bench.load import layout_config, measure, model_bytes, write_release_file
from viq.model.release import load_release
from viq.model.torchfile import open_pth


def test_bf16_load_peak_memory_is_bounded(tmp_path):
    # the published 16k layout at width 768, 2 encoder layers: 0.21 GB of bf16 weights, a
    # 0.45 GB fp32 file (the whole-file loader, fp32 copy + cast, needs about 4× the bf16 size)
    cfg = layout_config("16k", depth=2, width=768)
    path = write_release_file(tmp_path / "converted_16k", cfg, random=False)
    size = model_bytes(cfg, torch.bfloat16)
    assert 150e6 < size < 450e6 and path.stat().st_size > 1.9 * size
    r = measure(path, "stream", "bf16")
    load = r["peak_bytes"] - r["before_bytes"]
    assert size <= load <= 1.2 * size, f"load used {load / 1e6:.0f} MB for {size / 1e6:.0f} MB"


def test_streamed_tensors_equal_the_file_cast(tmp_path):
    state = {"a": torch.randn(40, 24), "b": torch.arange(10, dtype=torch.int64),
             "view": torch.randn(8, 6)[:, 1:4], "t": torch.randn(5, 7).T, "empty": torch.zeros(0)}
    torch.save(state, tmp_path / "x.pth")
    pth = open_pth(tmp_path / "x.pth")
    assert pth._entries is not None  # the bounded path, not the memory-map fallback
    for k, v in state.items():
        got = pth.read(k, torch.bfloat16 if v.is_floating_point() else None)
        assert got.shape == v.shape and torch.equal(got, v.to(got.dtype)), k
        assert got.is_contiguous() or k == "t"
    assert torch.equal(pth.read("a"), state["a"]) and pth.read("a").dtype == torch.float32


def test_cast_reads_in_chunks_equal_the_file(tmp_path, monkeypatch):
    import viq.model.torchfile as tf

    monkeypatch.setattr(tf, "CHUNK_BYTES", 36)  # 9 fp32 values a chunk: many chunks, a ragged end
    state = {"a": torch.randn(7, 13), "h": torch.randn(50, dtype=torch.float64)}
    torch.save(state, tmp_path / "x.pth")
    pth = open_pth(tmp_path / "x.pth")
    for k, v in state.items():
        got = pth.read(k, torch.bfloat16)
        assert torch.equal(got, v.to(torch.bfloat16)), k
    assert pth._scratch.numel() == 36


def test_damaged_and_foreign_files_get_clear_messages(tmp_path):
    bad = tmp_path / "objects.pth"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, bad)
    with pytest.raises(ValueError, match="non-tensor Python objects") as e:
        open_pth(bad)
    assert "argparse.Namespace" in str(e.value) and "will not be unpickled" in str(e.value)
    assert "weights_only" not in str(e.value)
    garbage = tmp_path / "model_viq_fsq_16k.pth"
    garbage.write_bytes(b"<html>not found</html>" * 50)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as e:
        load_release(garbage)
    assert "mmap" not in str(e.value)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-200])  # no zip directory at the end any more
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        open_pth(cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy"):
        open_pth(legacy)
