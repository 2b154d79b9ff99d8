"""Freeze the command-line flag set: a renamed or dropped flag breaks users' scripts, so it must
be a deliberate change to this table (and to the docs)."""

import argparse

import pytest

from viq.cli.main import main as viq_main

FLAGS = {
    "demo": "--dtype --image --out --preset --seed --set --weights",
    "encode": "--center-crop --checkpoint --device --dtype --max-tokens --out --overwrite "
              "--preset --quiet --random-init --resize --seed --set --size --weights -o",
    "decode": "--device --dtype --out --overwrite --quiet --size --weights -o",
    "bench encoder": "--atol --depth --device --dtype --heads --images --max-size --min-size "
                     "--mlp-dim --patch --pos-grid --quick --repeats --seed --warmup --width",
    "bench head": "--image-size --quick --repeats --threads",
    "bench data": "--max-tokens --resize --samples --seed --source --workers",
    "data synth": "--categories --format --image-format --jpeg-quality --max-aspect --max-side "
                  "--min-side --montage --n --out --overwrite --resize --samples-per-shard --seed "
                  "--splits --workers",
    "data score": "--out --pred --ref",
    "data photos": "--names --out",
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
