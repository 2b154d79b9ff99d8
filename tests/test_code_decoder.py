"""The code decoder (docs/design.md A2 "decoder"): codes' values → VAE latents, trained on a frozen
stage-2-2 tokenizer by the ``decoder`` stage; reconstructions read it through `draw`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from viq.config import override
from viq.eval.reconstruction import reconstruct_files
from viq.eval.understanding import load_run
from viq.model.code_decoder import CodeDecoder
from viq.model.packing import Packed
from viq.model.viq import ImageCodes
from viq.presets import get_run
from viq.train.frozen_cache import FrozenCache
from viq.train.loop import train
from viq.train.metrics import read_metrics
from viq.train.objective import Objective


def test_code_decoder_maps_each_grid_to_twice_its_size():
    dec = CodeDecoder(in_dim=24, width=8, blocks=2, latent_channels=16)
    grids = ((3, 5), (4, 2))
    x = Packed(torch.randn(sum(h * w for h, w in grids), 24), grids, 1)
    out = dec(x)
    assert [tuple(o.shape) for o in out] == [(16, 6, 10), (16, 8, 4)]
    with pytest.raises(ValueError, match="width 23, this decoder reads 24"):
        dec(Packed(torch.randn(15, 23), ((3, 5),), 1))


def test_code_decoder_sees_its_neighbours_not_other_images():
    dec = CodeDecoder(in_dim=4, width=8, blocks=1, latent_channels=2)
    torch.nn.init.normal_(dec.blocks[0].conv2.weight)  # the residual branch starts at zero
    a, b = torch.randn(9, 4), torch.randn(4, 4)
    alone = dec(Packed(a, ((3, 3),), 1))[0]
    packed = dec(Packed(torch.cat([a, b]), ((3, 3), (2, 2)), 1))[0]
    assert torch.allclose(alone, packed, atol=1e-6)  # images do not leak into each other
    a2 = a.clone()
    a2[0] += 1.0  # patch (0, 0) changes: its 2×2 latent pixels and their neighbours' change
    moved = (dec(Packed(a2, ((3, 3),), 1))[0] - alone).abs().sum(0)
    assert moved[0:2, 0:2].min() > 0 and moved[2:4, 2:4].max() > 0


def test_code_values_are_the_fsq_grid_values_per_patch():
    cfg = get_run("tiny_decoder")
    obj = Objective(cfg)
    model = obj.model
    codes = torch.randint(0, 1000, (2, 3, model.cfg.head.expand))
    values = model.code_values([ImageCodes(codes, model.levels)])
    assert values.tokens.shape == (6, model.code_dim) and values.grids == ((2, 3),)
    assert values.tokens.abs().max() <= 1
    flat = model.code_values(codes.reshape(-1), [(2, 3)])
    assert torch.equal(flat.tokens, values.tokens)
    first = model.head.quantizer.codes_to_values(codes[0, 0])  # (S, d) of patch (0, 0)
    assert torch.equal(values.tokens[0], first.reshape(-1))
    with pytest.raises(ValueError, match="not integers in"):
        model.code_values([codes + 10**6])


def test_frozen_cache_reuses_the_frozen_work_and_gives_the_same_loss():
    """L_recon on a frozen tokenizer keeps each image's codes and VAE target (`FrozenCache`): a
    batch seen again runs neither the tokenizer nor the VAE and gives the same loss."""
    obj = Objective(get_run("tiny_decoder"))
    obj.model.requires_grad_(False)
    calls = {"encoder": 0, "vae": 0}
    obj.model.encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder",
                                                                          calls["encoder"] + 1))
    obj.latent.vae.model.encoder.register_forward_hook(lambda *a: calls.__setitem__(
        "vae", calls["vae"] + 1))
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in ((32, 48), (48, 32), (32, 32)))
    with torch.no_grad():
        feats, _, _, codes = obj.features([a, b], pool=False)
        plain = obj.latent(obj.latent_input(feats, codes), [a, b])
    calls.update(encoder=0, vae=0)
    first = obj(SimpleNamespace(images=[a, b]))
    assert calls == {"encoder": 1, "vae": 2} and obj.cache.misses == 2
    assert torch.allclose(first.total, plain, rtol=1e-5) and set(first.terms) == {"recon"}
    again = obj(SimpleNamespace(images=[b.clone(), a.clone(), c]))  # same pixels, new tensors
    assert calls == {"encoder": 2, "vae": 3} and obj.cache.hits == 2  # only c was computed
    with torch.no_grad():
        feats, _, _, codes = obj.features([b, a, c], pool=False)
        plain = obj.latent(obj.latent_input(feats, codes), [b, a, c])
    assert torch.allclose(again.total, plain, rtol=1e-5)
    again.total.backward()
    assert obj.latent.latent_head.to_latent.weight.grad.abs().sum() > 0
    obj.cache = FrozenCache(0)  # no room: nothing is kept
    obj(SimpleNamespace(images=[a]))
    assert obj.cache.items == {} and obj.cache.misses == 1
    obj.model.encoder.requires_grad_(True)  # a tokenizer that trains is never cached
    obj(SimpleNamespace(images=[a]))
    assert obj.cache.misses == 1 and calls["encoder"] == 5


def test_codes_head_needs_an_fsq_stage():
    cfg = override(get_run("tiny_stage2_1"), ["vae.head=codes"])
    with pytest.raises(ValueError, match="'vae.head'.*no FSQ quantizer"):
        Objective(cfg)
    with pytest.raises(ValueError, match="'vae.head'"):
        override(get_run("tiny_decoder"), ["vae.head=pixels"])


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    s22 = override(get_run("tiny_stage2_2"), ["run.steps=3", "run.tensorboard=false",
                                              "data.synth_n=24"])
    train(s22, root / "s22", progress=False)
    cfg = override(get_run("tiny_decoder"), [
        f"stage.init_from={root / 's22'}", "run.steps=30", "run.tensorboard=false",
        "data.synth_n=24", "run.val_batches=0", "run.checkpoint_every=30"])
    train(cfg, root / "dec", progress=False)
    return root


def test_decoder_stage_trains_only_the_decoder_and_lowers_its_loss(decoder_run):
    root = decoder_run
    before = load_file(str(root / "s22" / "final" / "weights.safetensors"))
    after = load_file(str(root / "dec" / "final" / "weights.safetensors"))
    tokenizer = [k for k in before if k.startswith("model.")]
    assert tokenizer and all(torch.equal(before[k], after[k]) for k in tokenizer)
    assert any(k.startswith("latent.latent_head.stem") for k in after)
    losses = [r["recon"] for r in read_metrics(root / "dec" / "metrics.jsonl")
              if r["split"] == "train" and "recon" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_decoder_run_reconstructs_and_has_no_llm_to_ask(decoder_run):
    root = decoder_run
    with pytest.raises(ValueError, match="no text loss"):
        load_run(root / "dec")
    obj = load_run(root / "dec", answers=False)
    assert obj.latent.reads_codes and not hasattr(obj, "text")
    images = sorted((root / "dec" / "data" / "images").glob("*.png"))[:2]
    rec, pairs = reconstruct_files(obj, images, keep=2, vae=True)
    assert len(pairs) == 2 and all(p[0].shape == p[1].shape for p in pairs)
    assert rec.psnr > 0 and 0 <= rec.ssim <= 1
    # drawing with a stage-2-2 run builds no LLM and no teacher, and draws what the full run does
    light, full = load_run(root / "s22", answers=False), load_run(root / "s22")
    assert not hasattr(light, "text") and not hasattr(light, "distill") and hasattr(full, "text")
    a, b = reconstruct_files(light, images)[0], reconstruct_files(full, images)[0]
    assert [r["psnr"] for r in a.per_image] == [r["psnr"] for r in b.per_image]


def test_viq_decode_draws_with_a_trained_run(decoder_run, tmp_path, capsys):
    """viq encode --checkpoint <stage 2-2>/final, then viq decode --run <decoder>: the PNGs are
    the run's own reconstructions (`draw`), and a run without a drawer is a usage error."""
    from PIL import Image

    from viq.backends.vae import to_uint8
    from viq.cli.main import main
    from viq.codes.codesfile import load_codes
    from viq.eval.reconstruction import draw

    root = decoder_run
    images = sorted((root / "dec" / "data" / "images").glob("*.png"))[:2]
    assert main(["encode", *map(str, images), "--checkpoint", str(root / "s22" / "final"),
                 "-o", str(tmp_path / "codes"), "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "codes"), "-o", str(tmp_path / "png"),
                 "--run", str(root / "dec"), "--quiet"]) == 0
    assert "its code decoder" in capsys.readouterr().err
    obj = load_run(root / "dec", answers=False)
    for img in images:
        cf = load_codes(tmp_path / "codes" / f"{img.name}.codes.safetensors")
        want = to_uint8(draw(obj, [cf.codes])[0]).numpy()
        w, h = cf.image_size
        got = Image.open(tmp_path / "png" / img.name)
        assert got.size == (w, h)
        assert np.abs(np.asarray(got).astype(int) - want[:h, :w].astype(int)).max() <= 1
    assert main(["decode", str(tmp_path / "codes"), "-o", str(tmp_path / "png2"),
                 "--run", str(root / "nowhere")]) == 2
    assert "no trained weights" in capsys.readouterr().err


def test_viq_eval_reconstructs_with_a_decoder_run(decoder_run, capsys):
    from viq.cli.main import main

    root = decoder_run
    image = sorted((root / "dec" / "data" / "images").glob("*.png"))[0]
    assert main(["eval", "--run", str(root / "dec"), "--recon", str(image), "--quiet"]) == 0
    assert "reconstruction: PSNR" in capsys.readouterr().out
    split = root / "dec" / "data" / "val.json"
    assert main(["eval", "--run", str(root / "dec"), "--split", str(split), "--quiet"]) == 1
    assert "no text loss" in capsys.readouterr().err
