"""`LatentHead`: shapes over odd/even grids, release key names, per-image independence,
pixel-shuffle layout."""

import torch
import torch.nn.functional as F

from viq.model.latent import LatentHead, group_count
from viq.model.packing import Packed
from viq.model.release import latent_head_state_dict, vae_adapter_shapes


def _features(grids, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pieces = [torch.randn(h * w, width, generator=g) for h, w in grids]
    return Packed.cat(pieces, list(grids))


def test_shapes_for_odd_and_even_grids():
    torch.manual_seed(0)
    # width 64: 32 groups of 2 channels, so even a 1×1 grid has > 1 value per group
    head = LatentHead(64, heads=2).eval()
    grids = [(1, 1), (3, 5), (4, 4), (7, 2)]
    with torch.no_grad():
        out = head(_features(grids, width=64))
    assert [tuple(z.shape) for z in out] == [(16, 2 * h, 2 * w) for h, w in grids]
    assert all(torch.isfinite(z).all() for z in out)


def test_names_and_shapes_are_the_release_adapter_at_full_block_count():
    head = LatentHead(32, heads=2, blocks=3)
    got = {k: tuple(v.shape) for k, v in latent_head_state_dict(head).items()}
    assert got == vae_adapter_shapes(32)


def test_image_result_does_not_depend_on_its_batch():
    torch.manual_seed(1)
    head = LatentHead(32, heads=4, blocks=1, latent_channels=4).eval()
    grids = [(3, 5), (2, 2)]
    feats = _features(grids, seed=2)
    with torch.no_grad():
        both = head(feats)
        alone = head(Packed.cat([feats.split()[0]], [grids[0]]))
    assert torch.allclose(both[0], alone[0], atol=1e-6)
    assert tuple(both[1].shape) == (4, 4, 4)


def test_conv_part_matches_a_direct_computation():
    """Tokens in raster order → (C, h, w) map → GroupNorm/SiLU/conv → pixel-shuffle ×2, checked by
    hand: latent channel z at (2y+i, 2x+j) is conv channel 4z+2i+j at (y, x)."""
    torch.manual_seed(2)
    head = LatentHead(48, heads=3, blocks=0, latent_channels=2).eval()
    assert head.conv_norm_out.num_groups == group_count(48) == 16
    h, w = 3, 4
    tokens = torch.randn(h * w, 48)
    with torch.no_grad():
        z = head.to_latent(tokens, (h, w))
        grid = torch.stack([tokens[r * w:(r + 1) * w] for r in range(h)])  # (h, w, C)
        conv = head.conv_out(F.silu(head.conv_norm_out(grid.permute(2, 0, 1)[None])))[0]
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[c, i::2, j::2], conv[4 * c + 2 * i + j])


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    head = LatentHead(32, heads=2, blocks=1, latent_channels=4)
    out = head(_features([(2, 3), (1, 2)]))
    sum(z.square().mean() for z in out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
