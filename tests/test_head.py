"""The quantizer head: config validation, head-wise attention semantics, layouts, gradients."""

import dataclasses

import pytest
import torch

from viq.config import HeadConfig, ModelConfig, override
from viq.model.head import ViQHead
from viq.model.headwise import HeadwiseAttention
from viq.model.packing import Packed
from viq.presets import tiny

WIDTH = 32


def _tokens(grids, seed=0, width=WIDTH):
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in grids)
    return Packed(torch.randn(n, width, generator=g), tuple(grids))


def _head(**changes) -> ViQHead:
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny().head, **changes)
    head = ViQHead(cfg, WIDTH).eval()
    if head.expanded and cfg.quantizer == "fsq":
        head.calibrate_project_in(_tokens([(4, 6), (3, 5)], seed=9))
    return head


def test_config_validation_names_the_field():
    for kwargs, field in [({"layout": "wide"}, "head.layout"), ({"levels": (8, 1)}, "head.levels"),
                          ({"headwise_dim": 15}, "head.headwise_dim"),
                          ({"bound": "l1"}, "head.bound"), ({"rope": "sincos"}, "head.rope"),
                          ({"expand": 0}, "head.expand")]:
        with pytest.raises(ValueError, match=field):
            HeadConfig(**kwargs)
    with pytest.raises(ValueError, match="head.heads"):
        ViQHead(HeadConfig(heads=5), WIDTH)
    with pytest.raises(ValueError, match="head.bottleneck_dim"):
        ViQHead(HeadConfig(layout="paper", bottleneck_dim=64, heads=2), WIDTH)
    cfg = override(ModelConfig(), ["head.levels=8,8,8,6,5", "head.layout=paper"])
    assert cfg.head.levels == (8, 8, 8, 6, 5) and cfg.head.layout == "paper"


def test_headwise_attention_mixes_one_slot_across_patches_of_one_image_only():
    torch.manual_seed(0)
    slots, grids = 4, [(2, 3), (2, 2)]
    attn = HeadwiseAttention(WIDTH, 16, slots, compat=False).eval()
    from viq.model.rope import GoldenGateRoPE2d

    rope = GoldenGateRoPE2d(head_dim=16, n_heads=slots)
    angles = torch.cat([rope.angles(h, w) for h, w in grids])
    lengths = [h * w for h, w in grids]
    x = torch.randn(sum(lengths) * slots, WIDTH)
    base = attn(x, lengths, angles).view(-1, slots, WIDTH)  # (N, S, C)
    x2 = x.clone()
    x2[1 * slots + 2] += 1.0  # patch 1 (image 0), slot 2
    out = attn(x2, lengths, angles).view(-1, slots, WIDTH)
    changed = (out - base).abs().amax(dim=-1) > 1e-6  # (N, S)
    assert changed[:6, 2].all(), "slot 2 of every patch of image 0 must see the change"
    assert not changed[:, [0, 1, 3]].any(), "other slots must not see it"
    assert not changed[6:].any(), "the other image must not see it"


def test_released_head_output_shapes_and_codes():
    head = _head()
    x = _tokens([(4, 6), (3, 5)])
    out = head(x)
    assert out.features.tokens.shape == (39, WIDTH) and out.features.per_token == 1
    assert out.codes.dtype == torch.int64 and out.codes.shape == (39 * 4,)
    assert out.codes.unique().numel() > 20, "calibrated random head must use many codes"
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < 1000
    assert set(out.stats) >= {"usage", "perplexity"}


def test_positions_change_codes_and_all_options_run():
    x = _tokens([(4, 6)])
    pre = {kind: _head(rope=kind)(x).pre_quant for kind in ("golden", "axial", "none", "learned")}
    # same weights (same seed), only the positions differ: the quantizer input must differ
    assert not torch.equal(pre["golden"], pre["none"])
    assert not torch.equal(pre["golden"], pre["axial"])
    assert "positions.pos_embed" in dict(_head(rope="learned").named_parameters())
    assert "positions.pos_embed" not in dict(_head().named_parameters())


def test_straight_through_gradient_reaches_the_encoder_tokens():
    head = _head()
    x = _tokens([(3, 4)])
    tokens = x.tokens.clone().requires_grad_(True)
    out = head(x.replace(tokens))
    out.features.tokens.square().mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert head.project_in.weight.grad.abs().sum() > 0, "FSQ must pass gradients (STE)"


def test_paper_layout_stage_2_1_keys_nest_in_stage_2_2():
    s21 = _head(layout="paper", quantizer="proximal", bound="linf")
    s22 = _head(layout="paper", quantizer="fsq")
    k21, k22 = set(s21.state_dict()), set(s22.state_dict())
    assert k21 < k22
    assert {"bottleneck_in.weight", "bottleneck_out.weight"} <= k21
    new = k22 - k21
    assert all(k.split(".")[0] in {"pre_token_shuffle_head", "post_token_shuffle_head",
                                   "fsq_pre_attn", "project_in", "project_out",
                                   "inverse_token_shuffle_head"} for k in new), new
    missing, unexpected = s22.load_state_dict(s21.state_dict(), strict=False)
    assert set(missing) == new and not unexpected
    # stage 2-1 is continuous: no codes; its bottleneck is 16 wide and lies on the L∞ sphere
    x = _tokens([(3, 4)])
    out = s21(x)
    assert out.codes is None and out.pre_quant.shape == (12, 16)
    bounded = s21.quantizer(out.pre_quant).values
    torch.testing.assert_close(bounded.abs().amax(dim=-1), torch.ones(12))
    # stage 2-2 quantizes inside the bottleneck (D=16 → d=4 → D)
    out22 = s22(x)
    assert out22.codes.shape == (48,) and s22.project_in.weight.shape == (4, 16)


def test_official_compat_runs_project_in_in_the_model_dtype():
    x = _tokens([(3, 4)])
    plain, compat = _head(), _head(official_compat=True)
    compat.load_state_dict(plain.state_dict())
    for h in (plain, compat):
        h.to(torch.bfloat16)
    xb = x.replace(x.tokens.bfloat16())
    assert plain(xb).pre_quant.dtype == torch.float32
    assert compat(xb).pre_quant.dtype == torch.bfloat16


def test_calibrate_fresh_restores_the_signal_through_a_fresh_quantization_path():
    """A fresh 2-2 path squeezes everything onto one code and erases the 2-1 features; after
    `calibrate_fresh` every chain layer passes unit spread, the FSQ input is centred with unit
    std per channel, and the bottleneck gets back the proximal bound's spread."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny().head, layout="paper", quantizer="fsq", bottleneck_dim=16,
                              headwise_dim=8)
    head = ViQHead(cfg, WIDTH).eval()
    x = _tokens([(6, 8), (5, 7)], seed=3)
    with torch.no_grad():
        assert head(x).codes.unique().numel() <= 4  # collapsed before
        before = head.calibrate_fresh(x)
        assert before["project_in"] < 0.1
        for name in head.FRESH_CHAIN[:-1]:
            if name != "project_in":
                assert head._output_of(name, x).std().item() == pytest.approx(1.0, rel=1e-3)
        z = head(x).pre_quant
        assert torch.allclose(z.std(dim=0), torch.ones(z.shape[1]), rtol=1e-3)
        assert z.mean(dim=0).abs().max() < 1e-4
        from viq.quant import Proximal

        t = head.bottleneck_in(head.preprocess_layers[0](head.pre_norm(x.tokens), x.lengths))
        spread = Proximal(16, bound=cfg.bound)(t).values.std().item()
        last = head._output_of(head.FRESH_CHAIN[-1], x).std().item()
        assert last == pytest.approx(spread, rel=1e-3)
        assert head(x).codes.unique().numel() > 20
    with pytest.raises(ValueError, match="no quantization path"):
        ViQHead(dataclasses.replace(cfg, quantizer="proximal"), WIDTH).calibrate_fresh(x)
