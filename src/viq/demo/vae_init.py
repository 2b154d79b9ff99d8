"""A colour-exact starting point for the demo's ``AutoencoderKL`` (`viq.demo.vae`).

    from viq.demo.vae_init import box_init
    box_init(vae)  # in place, before training

Trained from a random init, the demo VAE learned layouts but lost colour in its few hundred CPU
steps: backgrounds all came back one off-white, objects brown or grey (docs/demo.md). The cause
is the architecture's two GroupNorms that have no skip around them (``encoder.conv_norm_out`` and
``decoder.conv_norm_out``): they normalise each image by its own statistics, so a colour shared
by most of an image (its background) is divided away unless the network has learned to carry it
in patterns that survive the normalisation — which takes far longer than the demo trains.

`box_init` sets the weights so that, before any training, the model is an exact linear
autoencoder of block colours, with the same architecture and config (it loads and runs as any
``AutoencoderKL``):

- every resnet's second convolution is zero (each block is its shortcut, a channel copy);
- the encoder carries (+R, −R, +G, −G, +B, −B, +K, −K) from ``conv_in`` on (K = 8, a constant),
  its downsamplers take 2×2 means, and the last one also reads the four 4×4 sub-blocks of each
  8×8 block apart; the latent holds the 12 sub-block colours, the 3 block means and their
  luminance (16 channels);
- the decoder averages the 4 sub-blocks back into the block colour and upsamples it by nearest
  neighbour (8× blocks);
- through the two GroupNorms, each value travels as a pair (+v, −v) beside a constant pair
  (+K, −K) in its group: the pairs make the group mean exactly 0 and the constant makes its
  variance nearly image-independent (within v²/K² ≈ 1 %), and SiLU(a) − SiLU(−a) = a, so the
  next convolution recovers v exactly from the pair.

Measured (the default demo's 320 training images, 16 val images; `viq.demo.vae` docstring): at
init 21.46 dB against 21.59 dB for 8× box means with nearest upsampling; trained from it, the
demo's 170 steps give 24.2 dB with mean 8×8-block colour errors of 1–2 / 255 per channel (300
steps: 25.8 dB), against 19.2 dB and 13–14 / 255 from a random init (300 steps: 20.8 dB,
9–12 / 255). The constant channels make every weight that reads them
sensitive: the learning rate must be ~10× lower than from a random init (at the random init's
2e-3 training undoes the colours within 50 steps).
"""

from __future__ import annotations

import torch
from torch import nn

K = 8.0  # the constant pair's level (see the module docstring)
SUB = 12  # 4 sub-blocks × RGB
LATENT = SUB + 3 + 1  # + block means + their luminance


def _copy_(conv: nn.Conv2d) -> None:
    """Channel copy (identity on the first min(in, out) channels), centre tap."""
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    kh, kw = conv.weight.shape[2:]
    for ch in range(min(conv.in_channels, conv.out_channels)):
        conv.weight[ch, ch, kh // 2, kw // 2] = 1.0


def _pairs(n: int, norm: nn.GroupNorm, where: str) -> tuple[list[int], list[int]]:
    """Channels of ``n`` (+v, −v) pairs spread evenly over ``norm``'s groups (fewer values per
    group: a variance closer to the constant's), each used group also holding one (+K, −K)
    pair: (first channel of each value's pair, first channel of each constant pair)."""
    per, groups = norm.num_channels // norm.num_groups, norm.num_groups
    each = -(-n // groups)  # values per group
    if 2 * each + 2 > per:
        raise ValueError(f"box_init: {where} has {groups} GroupNorm groups of {per} channels, "
                         f"too few for {n} values as (+v, -v) pairs beside a constant pair; use "
                         "wider blocks (the demo's are (16, 32, 64, 64))")
    used = -(-n // each)
    values = [g * per + 2 * j for g in range(used) for j in range(each)][:n]
    return values, [g * per + 2 * each for g in range(used)]


def _check(vae) -> None:
    cfg = vae.config
    widths = tuple(cfg.block_out_channels)
    if len(widths) != 4 or cfg.latent_channels != LATENT or cfg.in_channels != 3 \
            or cfg.out_channels != 3:
        raise ValueError("box_init: needs 4 blocks (8×), RGB in and out and "
                         f"{LATENT} latent channels; got blocks {widths}, latent "
                         f"{cfg.latent_channels}")
    if widths[0] != min(widths) or widths[0] < 8 or widths[2] != widths[3]:
        raise ValueError("box_init: the first width must be the smallest and >= 8 (the "
                         "decoder's last blocks keep its first channels) and the last two "
                         f"equal (the last downsampler writes the latent's layout); got {widths}")


@torch.no_grad()
def box_init(vae):
    """Set ``vae`` (a 4-block, 16-latent-channel ``AutoencoderKL``) to the colour-exact linear
    autoencoder of the module docstring; returns it. The posterior's log-variance rows of
    ``quant_conv`` are left as they are."""
    from diffusers.models.resnet import ResnetBlock2D

    _check(vae)
    enc, dec = vae.encoder, vae.decoder
    for m in vae.modules():
        if isinstance(m, ResnetBlock2D):
            m.conv2.weight.zero_()
            m.conv2.bias.zero_()
            if m.conv_shortcut is not None:
                _copy_(m.conv_shortcut)

    # encoder: (+R, −R, +G, −G, +B, −B, +K, −K) in channels 0–7, 2×2 means, then space to depth
    w, b = enc.conv_in.weight, enc.conv_in.bias
    w.zero_()
    b.zero_()
    for c in range(3):
        w[2 * c, c, 1, 1], w[2 * c + 1, c, 1, 1] = 1.0, -1.0
    b[6], b[7] = K, -K
    downs = [blk.downsamplers[0].conv for blk in enc.down_blocks if blk.downsamplers]
    for conv in downs[:-1]:  # taps [0:2, 0:2] of the stride-2 3×3 kernel: a 2×2 window
        conv.weight.zero_()
        conv.bias.zero_()
        for ch in range(8):
            conv.weight[ch, ch, :2, :2] = 0.25
    last = downs[-1]
    last.weight.zero_()
    last.bias.zero_()
    values, consts = _pairs(LATENT - 1, enc.conv_norm_out, "the encoder's last block")
    for k, ch in enumerate(values):  # k < 12: sub-block (a, b), colour c; then the 3 means
        for s in range(2):
            if k < SUB:
                (a, bb), c = divmod(k // 3, 2), k % 3
                last.weight[ch + s, 2 * c + s, a, bb] = 1.0
            else:
                last.weight[ch + s, 2 * (k - SUB) + s, :2, :2] = 0.25
    for ch in consts:
        last.weight[ch, 6, :2, :2] = last.weight[ch + 1, 7, :2, :2] = 0.25
    _unit_gain(enc.conv_norm_out)
    co = enc.conv_out  # latent means: 12 sub-blocks, 3 block means, luminance
    co.weight.zero_()
    co.bias.zero_()
    for k, ch in enumerate(values):
        co.weight[k, ch, 1, 1], co.weight[k, ch + 1, 1, 1] = 1.0, -1.0
    for k in range(SUB, SUB + 3):
        co.weight[LATENT - 1, values[k], 1, 1] = 1 / 3
        co.weight[LATENT - 1, values[k] + 1, 1, 1] = -1 / 3
    q = vae.quant_conv
    q.weight[:LATENT].zero_()
    q.bias[:LATENT].zero_()
    for z in range(LATENT):
        q.weight[z, z, 0, 0] = 1.0
    _copy_(vae.post_quant_conv)

    # decoder: the block colour (mean of the 4 sub-blocks) as pairs in its first channels
    values, consts = _pairs(3, dec.conv_norm_out, "the decoder's last block")
    w, b = dec.conv_in.weight, dec.conv_in.bias
    w.zero_()
    b.zero_()
    for c, ch in enumerate(values):
        for p in range(4):
            w[ch, 3 * p + c, 1, 1], w[ch + 1, 3 * p + c, 1, 1] = 0.25, -0.25
    for ch in consts:
        b[ch], b[ch + 1] = K, -K
    for blk in dec.up_blocks:  # nearest upsampling, then a channel copy
        if blk.upsamplers:
            _copy_(blk.upsamplers[0].conv)
    _unit_gain(dec.conv_norm_out)
    co = dec.conv_out
    co.weight.zero_()
    co.bias.zero_()
    for c, ch in enumerate(values):
        co.weight[c, ch, 1, 1], co.weight[c, ch + 1, 1, 1] = 1.0, -1.0
    return vae


def _unit_gain(norm: nn.GroupNorm) -> None:
    """Undo the division by a group's std for the values: with one constant pair per group of
    ``per`` channels (the values ≈ 0 beside K), that std is K·√(2 / per)."""
    per = norm.num_channels // norm.num_groups
    norm.weight.fill_(K * (2 / per) ** 0.5)
    norm.bias.zero_()
