"""Freeze the command-line flag set: a renamed or dropped flag breaks users' scripts, so it must
be a deliberate change to this table (and to the docs)."""

import argparse

import pytest

from viq.cli.main import main as viq_main

FLAGS = {
    "try": "--dtype --image --out --preset --seed --set --size --weights",
    "demo": "--out --quick --quiet --seed --seeds",
    "train": "--config --dry-run --out-dir --preset --quiet --resume --set --tokens --world",
    "eval": "--codes --compare --fid --limit --lmms-task --mode --out --quiet --recon --run "
            "--size --split --weights",
    "push": "--dry-run --private --revision",
    "ablate": "--demo --quick --quiet --skip-captions",
    "extract": "--bad-samples --center-crop --checkpoint --compile --device --dtype --image-root "
               "--max-tokens --num-shards --out --packed --preset --quiet --random-init --resize "
               "--seed --set --shard-index --size --weights --workers",
    "bench mllm-speedup": "--device --dtype --paper --quick --repeats",
    "encode": "--center-crop --checkpoint --compile --device --dtype --max-tokens --out "
              "--overwrite --packed --preset --quiet --random-init --resize --seed --set --size "
              "--weights --workers -o",
    "decode": "--device --dtype --out --overwrite --preset --quiet --random-init --run --seed "
              "--set --size --weights -o",
    "bench encoder": "--atol --depth --device --dtype --heads --images --max-size --min-size "
                     "--mlp-dim --patch --pos-grid --quick --repeats --seed --warmup --width",
    "bench extract": "--checkpoint --compile --device --dtype --max-tokens --preset --quick "
                     "--random-init --repeats --seed --set --size --synthetic --threads "
                     "--weights --workers",
    "bench head": "--device --image-size --quick --repeats --threads",
    "bench encode": "--device --dtype --images --paper --quick --repeats",
    "bench neighbour": "--preset --set --steps --warmup",
    "bench data": "--max-tokens --resize --samples --seed --source --workers",
    "bench load": "--child --depth --dir --dtype --file --methods --size --width",
    "data synth": "--categories --format --image-format --jpeg-quality --max-aspect --max-objects "
                  "--max-side --min-side --montage --n --out --overwrite --resize "
                  "--samples-per-shard --seed --splits --train-turns --workers",
    "data score": "--out --pred --ref",
    "data photos": "--names --out",
    "app": "--checkpoint --device --host --port --run --size --weights",
}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_flag_set_is_frozen(command, monkeypatch, capsys):
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def record(self, file=None):
        seen.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit):
        viq_main([*command.split(), "--help"])
    flags = {s for s in seen[-1]._option_string_actions if s not in ("-h", "--help")}
    assert flags == set(FLAGS[command].split())


def test_quiet_also_hides_the_hugging_face_loading_bars():
    from transformers.utils import logging

    from viq.backends.llm import quiet_loading

    logging.enable_progress_bar()
    try:
        quiet_loading()
        assert not logging.is_progress_bar_enabled()
    finally:
        logging.enable_progress_bar()
