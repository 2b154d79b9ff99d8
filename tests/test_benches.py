"""The head and data benchmarks run in-process and end with their JSON line."""

import json

import pytest

from viq.cli.main import main as viq_main


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_head_quick(capsys):
    assert viq_main(["bench", "head", "--quick", "--repeats", "1"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["bench"] == "head" and res["quick"] is True
    for dtype in ("fp32", "bf16"):
        row = res["paper_width"][dtype]
        assert row["total_s"] == pytest.approx(row["encoder_s"] + row["head_s"], rel=1e-6)
    assert res["small"]["tiny"]["tokens_per_s"] > 0


def test_bench_encode_quick_compares_per_image_and_packed_codes(capsys):
    assert viq_main(["bench", "encode", "--quick", "--images", "4", "--repeats", "1"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["bench"] == "encode" and res["images"] == 4
    assert res["codes"] == 4 * res["patches"]  # 4 codes a 16-px patch
    assert 0 <= res["codes_differ"] <= res["codes"] and 0 <= res["images_differ"] <= 4
    assert res["per_image_s"] > 0 and res["packed_s"] > 0
    assert viq_main(["bench", "encode", "--quick", "--paper"]) == 2


@pytest.mark.parametrize("source", ["toy", "synth"])
def test_bench_data_reports_loader_and_step(source, capsys):
    argv = ["bench", "data", "--samples", "8", "--workers", "0", "--max-tokens", "1024",
            "--source", source, "--resize", "64x32"]
    assert viq_main(argv) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["source"] == source and res["samples"] == 8
    assert res["loader_json_w0_samples_per_s"] > 0 and res["step_samples_per_s"] > 0
    assert res["keeps_up"] == (res["loader_json_w0_samples_per_s"] > res["step_samples_per_s"])


def test_bench_extract_splits_the_time_and_keeps_the_codes(capsys):
    argv = ["bench", "extract", "--preset", "tiny", "--synthetic", "3", "--workers", "0,2"]
    assert viq_main(argv) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["bench"] == "extract" and res["codes_equal"] and res["compiled"] is None
    plain, loaded = res["rows"]
    assert (plain["workers"], loaded["workers"]) == (0, 2)
    assert plain["images"] == loaded["images"] == res["mix"]["png"] + res["mix"]["jpeg"] == 7
    for row in res["rows"]:
        assert 0 < row["model_s"] < row["loop_s"] < row["wall_s"] and 0 < row["model_busy"] < 1
        assert row["setup_s"] == pytest.approx(row["wall_s"] - row["loop_s"])
        assert row["model_s"] + row["wait_s"] + row["write_s"] <= row["loop_s"] * 1.01
    # the plain loop loads in its own process: its waits are its loading
    assert plain["wait_s"] >= plain["load_s"] * 0.9
    assert res["loaders_needed"] >= 1
    assert viq_main(["bench", "extract", "--workers", "0,x"]) == 2
