"""Model cards (docs/design.md C32): ``save_pretrained``, the card of a training run's
``final/`` with the run's numbers, ``viq eval`` adding its numbers, and ``viq push``'s prepared
folder. Every card is read back with ``huggingface_hub.ModelCard.load``. The upload itself needs
the network and a token: only its refusals are tested here."""

from __future__ import annotations

import json
import re

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

from viq.cli.main import main
from viq.model.card import PIPELINE_TAG, merge_results
from viq.model.viq import ViQModel
from viq.presets import tiny
from viq.train.metrics import read_metrics

PUSHED = {"README.md", "config.json", "model.safetensors", "train_config.json",
          "weights.safetensors"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "s22"
    assert main(["train", "--preset", "tiny_stage2_2", "--out-dir", str(out), "--quiet"]) == 0
    return out


def _numbers(card: ModelCard) -> dict[tuple, object]:
    return {(r.task_type, r.dataset_split, r.dataset_config, r.metric_type, r.metric_config):
            r.metric_value for r in card.data.eval_results or []}


def test_save_pretrained_writes_the_models_card(tmp_path):
    from viq.data.bundled import bundled_photo

    model = ViQModel(tiny()).eval()
    model.save_pretrained(tmp_path / "plain", card=False)
    assert not (tmp_path / "plain" / "README.md").exists()  # card=False: none
    d = model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in d.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = ModelCard.load(d / "README.md")
    data = card.data
    assert data.library_name == "viq" and data.pipeline_tag == PIPELINE_TAG
    assert {"viq", "image-tokenizer", "fsq", "any-resolution"} <= set(data.tags)
    assert data.license is None  # a model of unknown origin: no licence is claimed
    assert data.eval_results is None and "model-index" not in card.content
    assert "1,000 codes" in card.text and "width 32, depth 2" in card.text
    before = (d / "README.md").stat().st_mtime_ns
    model.save_pretrained(d, card=True)  # the same model: the same card, file untouched
    assert (d / "README.md").stat().st_mtime_ns == before
    # the card's usage snippet runs as written
    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    code = code.replace('"FOLDER"', repr(str(d))).replace('"photo.jpg"', repr(str(bundled_photo())))
    scope: dict = {}
    exec(code, scope)
    image = scope["image"]
    assert torch.equal(scope["codes"], model.encode([image])[0].codes)


def test_a_training_run_writes_its_card_with_its_numbers(run):
    card = ModelCard.load(run / "final" / "README.md")
    data = card.data
    assert data.library_name == "viq" and data.license == "apache-2.0"
    assert data.pipeline_tag == PIPELINE_TAG and "fsq" in data.tags
    assert data.model_name == run.name and data.datasets is None and data.base_model is None
    records = read_metrics(run / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"][-1]
    train = [r for r in records if r["split"] == "train"][-1]
    got = _numbers(card)
    feat = "image-feature-extraction"
    assert got[(feat, "validation", None, "loss", None)] == val["loss"]
    for term in ("text", "distill", "recon"):
        assert got[(feat, "validation", None, f"{term}_loss", None)] == val[term]
    assert got[(feat, "train", None, "code_usage", None)] == train["usage"]
    assert got[(feat, "train", None, "code_perplexity", None)] == train["perplexity"]
    assert "stage `stage2_2`" in card.text and "; 6 steps" in card.text
    assert str(run.parent) not in card.content  # no folder of this machine
    # a re-export writes the same bytes (no dates)
    from viq.train.card import write_run_card

    text = (run / "final" / "README.md").read_text()
    write_run_card(run / "final", steps=6)
    assert (run / "final" / "README.md").read_text() == text


def test_viq_eval_adds_understanding_and_reconstruction(run, tmp_path):
    split = run / "data" / "val.json"
    image = sorted((run / "data" / "images").glob("*.png"))[0]
    final = run / "final" / "README.md"
    base = _numbers(ModelCard.load(final))
    outs = {}
    for mode in ("images", "blind"):
        outs[mode] = tmp_path / f"{mode}.json"
        assert main(["eval", "--run", str(run), "--split", str(split), "--mode", mode,
                     "--limit", "4", "--quiet", "--out", str(outs[mode])]) == 0
    assert main(["eval", "--run", str(run), "--recon", str(image), "--quiet",
                 "--out", str(tmp_path / "rec.json")]) == 0
    card = ModelCard.load(final)
    got = _numbers(card)
    assert base.items() <= got.items()  # the training numbers stay
    vqa = "visual-question-answering"
    for mode, path in outs.items():
        und = json.loads(path.read_text())["understanding"]
        assert got[(vqa, "val", None, "accuracy", mode)] == und["overall"]["accuracy"]
        for cat, tally in und["per_category"].items():
            assert got[(vqa, "val", cat, "accuracy", mode)] == tally["accuracy"]
    rec = json.loads((tmp_path / "rec.json").read_text())["reconstruction"]
    assert got[("image-to-image", None, None, "psnr", None)] == rec["psnr"]
    assert got[("image-to-image", None, None, "ssim", None)] == rec["ssim"]
    assert "| category | images | blind |" in card.text and "PSNR (dB) from codes" in card.text
    # measured again: replaced, not repeated
    n = len(card.data.eval_results)
    assert main(["eval", "--run", str(run), "--split", str(split), "--limit", "4",
                 "--quiet"]) == 0
    assert len(ModelCard.load(final).data.eval_results) == n


def test_update_card_merges_in_one_order_and_skips_unfinished_runs(run, tmp_path):
    from viq.eval.card import eval_results, update_card

    def und(mode, acc):
        tally = {"n": 4, "correct": int(4 * acc), "accuracy": acc}
        return {"understanding": {"mode": mode, "overall": tally, "per_category": {"ocr": tally}}}

    a, b = eval_results(und("codes", 0.5), "test.json"), eval_results(und("shuffled", .25),
                                                                     "test.json")
    assert merge_results(a, b) == merge_results(b, a)
    c = eval_results(und("codes", 0.75), "test.json")
    assert merge_results(a, c) == merge_results(c)  # measured again: replaced
    assert update_card(tmp_path / "nowhere" / "final", und("codes", 0.5)) is None
    path = update_card(run / "final", und("codes", 0.5), "test.json")
    got = _numbers(ModelCard.load(path))
    assert got[("visual-question-answering", "test", "ocr", "accuracy", "codes")] == 0.5


def test_push_dry_run_prepares_a_loadable_folder(run, capsys):
    from viq.model.factory import build_model

    assert main(["push", str(run), "org/viq-tiny", "--dry-run"]) == 0
    staged = run / "push"
    assert {p.name for p in staged.iterdir()} == PUSHED
    assert str(staged) in capsys.readouterr().out
    assert (staged / "README.md").read_text() == (run / "final" / "README.md").read_text()
    assert ModelCard.load(staged / "README.md").data.library_name == "viq"
    image = torch.rand(3, 64, 96) * 2 - 1
    built = build_model(checkpoint=staged).model
    want = ViQModel.from_pretrained(run / "final").encode([image])[0].codes
    assert torch.equal(built.encode([image])[0].codes, want)
    assert main(["push", str(run), "org/viq-tiny", "--dry-run"]) == 0  # again: the same folder
    assert {p.name for p in staged.iterdir()} == PUSHED


def test_push_fails_in_one_line(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)

    def one_line(rc: int, *words: str) -> None:
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("viq push: error: ") and "Traceback" not in "".join(err)
        assert all(w in err[-1] for w in words), err[-1]
        assert sum(line.startswith("viq push") for line in err) == 1

    assert main(["push", str(run), "org/viq-tiny"]) == 1
    one_line(1, "no Hugging Face token", "hf auth login")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(run), "org/viq-tiny", "--private", "--revision", "v1"]) == 1
    one_line(1, "org/viq-tiny", "failed", "network")
    assert main(["push", str(run), "org/viq/tiny"]) == 2
    one_line(2, "org/name")
    assert main(["push", str(tmp_path / "unfinished"), "org/viq-tiny"]) == 1
    one_line(1, "final", "viq train")
    (run / "push" / "notes.txt").write_text("mine")
    assert main(["push", str(run), "org/viq-tiny", "--dry-run"]) == 1
    one_line(1, "notes.txt")
    (run / "push" / "notes.txt").unlink()


def test_the_card_is_not_part_of_a_checkpoints_identity(tmp_path):
    """``viq eval`` rewrites ``final/README.md``: codes encoded from the folder stay reusable."""
    from viq.fingerprint import weights_identity

    d = ViQModel(tiny()).save_pretrained(tmp_path / "ckpt")
    before = weights_identity(d)
    (d / "README.md").write_text("---\nlibrary_name: viq\n---\nrewritten\n")
    assert weights_identity(d) == before
    (d / "config.json").write_text((d / "config.json").read_text() + " ")
    assert weights_identity(d) != before
