"""The vision → LLM projector (docs/design.md B3.2): token counts for even and odd grids, the
pooling math, parameter names, per-image independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from viq.data.chat import image_token_count
from viq.model.packing import Packed
from viq.model.projector import Projector


def _feats(grids, c=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Packed(torch.randn(sum(h * w for h, w in grids), c, generator=g), tuple(grids))


@pytest.mark.parametrize("grids", [[(1, 1)], [(3, 5)], [(2, 7)], [(2, 2), (1, 1), (3, 5), (4, 6)],
                                   [(5, 1), (1, 4), (24, 24)]])
def test_token_counts_equal_image_token_count(grids):
    torch.manual_seed(0)
    proj = Projector(32, 24)
    out = proj(_feats(grids))
    assert [o.shape for o in out] == [(image_token_count(g), 24) for g in grids]
    assert all(torch.isfinite(o).all() for o in out)


def test_layout_and_parameter_names():
    torch.manual_seed(0)
    proj = Projector(32, 16)
    names = {n: tuple(p.shape) for n, p in proj.named_parameters()}
    assert names == {
        "proj1.weight": (16, 32), "proj1.bias": (16,), "proj2.weight": (16, 16),
        "proj2.bias": (16,), "pooler.predictor.0.weight": (16, 32),
        "pooler.predictor.0.bias": (16,), "pooler.predictor.2.weight": (16, 16),
        "pooler.predictor.2.bias": (16,), "image_newline": (16,), "image_begin": (16,),
        "image_end": (16,), "out_gain": (1,)}  # out_gain: ours, 1 = the release's projector
    assert proj.out_gain.item() == 1.0
    out = proj(_feats([(4, 6)]))[0]  # pooled grid 2×3 → 2 rows of (3 + newline), begin/end
    assert torch.equal(out[0], proj.image_begin) and torch.equal(out[-1], proj.image_end)
    rows = out[1:-1].reshape(2, 4, 16)
    assert torch.equal(rows[:, 3], proj.image_newline.expand(2, 16))


def test_pooling_matches_a_direct_computation():
    torch.manual_seed(1)
    proj = Projector(8, 8)
    feats = _feats([(2, 4)], c=8)
    x = proj.proj1(feats.tokens).reshape(2, 4, 8)
    expected = []
    for j in range(2):  # the two 2×2 windows, left to right
        win = x[:, 2 * j:2 * j + 2].reshape(4, 8)  # its 4 members
        m = win.mean(0, keepdim=True).expand(4, 8)
        w = proj.pooler.predictor(torch.cat([win, m], -1)).softmax(0)  # per channel over 4
        expected.append(proj.proj2(F.gelu((w * win).sum(0))))
    out = proj(feats)[0]
    torch.testing.assert_close(out[1:3], torch.stack(expected))


def test_odd_grid_replicates_edge():
    torch.manual_seed(2)
    proj = Projector(8, 8)
    one = _feats([(1, 1)], c=8)
    out = proj(one)[0]  # a 1×1 grid pools its single patch back (replicate padding)
    direct = proj.proj2(F.gelu(proj.proj1(one.tokens[0])))
    torch.testing.assert_close(out[1], direct)
    # 3×5 equals the 4×6 grid built by replicating the last row and column of proj1's map
    odd = _feats([(3, 5)], c=8, seed=3)
    grid = odd.tokens.reshape(3, 5, 8)
    grid = torch.cat([grid, grid[-1:]], 0)
    grid = torch.cat([grid, grid[:, -1:]], 1)
    even = Packed(grid.reshape(24, 8), ((4, 6),))
    torch.testing.assert_close(proj(odd)[0], proj(even)[0])


def test_image_result_independent_of_batch_and_grad_flows():
    torch.manual_seed(3)
    proj = Projector(32, 16)
    feats = _feats([(2, 2), (3, 5)])
    alone = proj(Packed(feats.split()[1], ((3, 5),)))[0]
    out = proj(feats)
    torch.testing.assert_close(out[1], alone)
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert proj(None) == [] and proj(Packed(torch.zeros(0, 32), ())) == []


def test_dtype_follows_parameters():
    proj = Projector(32, 16).to(torch.bfloat16)
    out = proj(_feats([(3, 3)]))  # fp32 features are cast on entry
    assert out[0].dtype == torch.bfloat16 and out[0].shape == (image_token_count((3, 3)), 16)


def test_calibrate_brings_image_tokens_to_the_llm_embedding_norm():
    torch.manual_seed(0)
    proj = Projector(32, 24)
    w2 = proj.proj2.weight.clone()
    feats = Packed(_feats([(4, 6), (3, 5)]).tokens * 30 + 5, ((4, 6), (3, 5)))
    before = proj.calibrate(feats, 3.0)
    # the scale lives in the scalar gain: proj2 keeps its default scale, so Adam's ~lr-sized
    # steps stay small relative to its weights
    assert torch.equal(proj.proj2.weight, w2) and proj.out_gain.item() < 0.5
    x = proj.proj1(feats.tokens)
    pooled = torch.cat([proj.pooled(t, g).reshape(-1, 24)
                        for t, g in zip(torch.split(x, feats.lengths), feats.grids, strict=True)])
    assert before > 10 and pooled.norm(dim=-1).mean().item() == pytest.approx(3.0, rel=1e-4)
    assert [b.shape for b in proj(feats)] == [(image_token_count(g), 24) for g in feats.grids]
    for v in (proj.image_newline, proj.image_begin, proj.image_end):
        assert v.norm().item() == pytest.approx(3.0, rel=1e-5)
