"""The ViQ quantizer head: encoder features → discrete codes → features for the LLM (docs/design.md
A1, B2 steps 1–9, B3.1, C1).

One module, two layouts (``HeadConfig.layout``):

``released`` (all published weights; B2): non-affine LayerNorm → pre-blocks → 1→S expansion MLP
("token shuffle", S = 4 slots per patch) → per-slot MLP → head-wise attention blocks with 2D RoPE →
``project_in`` C→d → quantizer → ``project_out`` d→C → fold S→1 + MLP → post MLP + residual MLPs →
learned per-channel affine.

``paper`` (A2, decided here since paper and release are silent on the details, docs/design.md B2.1,
B5.4):
  - stage 2-1 (``quantizer`` = proximal/identity): LN → pre-blocks → ``bottleneck_in`` C→D →
    proximal bound (L∞ default) → ``bottleneck_out`` D→C → post → affine. No expansion.
  - stage 2-2 (``quantizer`` = fsq): the same, and inside the bottleneck the released stack at width
    D: expansion, head-wise attention + RoPE, D→d, FSQ, d→D, fold. Every 2-1 parameter keeps its
    name, so a 2-1 checkpoint loads into 2-2 with only the new parameters fresh.
  In the released layout a proximal/identity quantizer sits where FSQ sits (project_in C→D).

Parameter names mirror the release's ``fusion_block.vq_low*`` keys so that a prefix map gives the
published file layout (``viq.model.release``). Numerics (``official_compat``, docs/design.md B8.1
⚑): with it, ``project_in`` runs in the model dtype (bf16 in the release) and RoPE uses the
release's bf16 angles; without it ``project_in`` runs in fp32. In both, FSQ rounds in fp32 and the
quantized values are cast to the model dtype before ``project_out`` — in the forward and in
``embed`` alike, so ``embed(codes)`` reproduces the forward's features exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from viq.config import HeadConfig, check
from viq.model.headwise import HeadwiseBlock, ResidualMlp, SlotPositions, apply_linear
from viq.model.layers import Block, Mlp, linear_rows
from viq.model.packing import Packed


@dataclass
class HeadOutput:
    """``features``: per-patch features (Packed, per_token=1, width C). ``codes``: int64 (S·N,)
    patch-major (slot fastest) or None for continuous quantizers. ``pre_quant``: the quantizer
    input (rows of the packed sub-token or token sequence)."""

    features: Packed
    codes: torch.Tensor | None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    pre_quant: torch.Tensor | None = None


def _build_quantizer(cfg: HeadConfig, dim: int) -> nn.Module:
    from viq.quant import build_quantizer

    return build_quantizer(cfg.quantizer, dim, levels=cfg.levels, bound=cfg.bound)


class ViQHead(nn.Module):
    """Quantizer head on encoder width ``width`` (C). See the module docstring for the layouts."""

    def __init__(self, cfg: HeadConfig, width: int) -> None:
        super().__init__()
        check(width % cfg.heads == 0, "head.heads",
              f"encoder width {width} is not divisible by head.heads={cfg.heads}")
        self.cfg, self.width = cfg, width
        paper = cfg.layout == "paper"
        check(not paper or cfg.bottleneck_dim <= width, "head.bottleneck_dim",
              f"{cfg.bottleneck_dim} exceeds the encoder width {width}; a bottleneck must narrow")
        self.expanded = (not paper) or cfg.quantizer == "fsq"
        stage = cfg.bottleneck_dim if paper else width  # width of the expansion stage
        self.stage_width = stage
        self.pre_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-5)
        self.preprocess_layers = nn.ModuleList(
            Block(width, cfg.heads, 4 * width) for _ in range(cfg.pre_blocks))
        if paper:
            self.bottleneck_in = nn.Linear(width, stage)
            self.bottleneck_out = nn.Linear(stage, width)
        qdim = len(cfg.levels) if cfg.quantizer == "fsq" else cfg.bottleneck_dim
        if self.expanded:
            s, hd = cfg.expand, min(cfg.headwise_dim, stage)
            self.head_dim = hd
            self.pre_token_shuffle_head = Mlp(stage, s * stage, s * stage)
            self.post_token_shuffle_head = Mlp(stage, stage, stage)
            self.positions = SlotPositions(cfg.rope, stage, hd, s, cfg.pos_grid)
            self.fsq_pre_attn = nn.ModuleList(
                HeadwiseBlock(stage, hd, s, cfg.official_compat)
                for _ in range(cfg.headwise_blocks))
            self.project_in = nn.Linear(stage, qdim)
            self.project_out = nn.Linear(qdim, stage)
            self.inverse_token_shuffle_head = Mlp(s * stage, s * stage, stage)
        else:
            qdim = stage  # the bound acts on the bottleneck itself
        self.quantizer = _build_quantizer(cfg, qdim)
        self.postprocess_layers = nn.Sequential(
            Mlp(width, width, width),
            *(ResidualMlp(width, 2 * width) for _ in range(cfg.post_residual)))
        self.post_affine_weight = nn.Parameter(torch.ones(width))
        self.post_affine_bias = nn.Parameter(torch.zeros(width))
        self.apply(_init_weights)

    @property
    def has_codes(self) -> bool:
        return self.cfg.quantizer == "fsq"

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Packed) -> HeadOutput:
        """Encoder tokens (Packed, per_token=1, width C) → features, codes, quantizer stats."""
        if x.per_token != 1 or x.tokens.shape[-1] != self.width:
            raise ValueError(f"ViQHead: expected encoder tokens (N, {self.width}) with "
                             f"per_token=1, got {tuple(x.tokens.shape)} per_token={x.per_token}")
        t = self._stage_input(x)
        if self.expanded:
            z = self._encode_slots(t, x.grids)
        else:
            z = t
        q = self.quantizer(z)
        if self.expanded:
            t = self._decode_slots(q.values)
        else:
            t = q.values.to(z.dtype)
        return HeadOutput(x.replace(self._finish(t)), q.codes, q.stats, z)

    def _stage_input(self, x: Packed) -> torch.Tensor:
        """Encoder tokens → the input of the bound / expansion stage: LN, pre-blocks and, in the
        paper layout, ``bottleneck_in`` (what stage 2-1's proximal bound acts on)."""
        t = self.pre_norm(x.tokens)
        for blk in self.preprocess_layers:
            t = blk(t, x.lengths)
        if self.cfg.layout == "paper":
            t = apply_linear(self.bottleneck_in, t)
        return t

    def _encode_slots(self, t: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(N, W) → quantizer input (S·N, q): expansion, head-wise attention, project_in."""
        s, n, w = self.cfg.expand, t.shape[0], self.stage_width
        # (N, S·W) -> (S·N, W): sub-token j of patch n takes channels [j·W, (j+1)·W)
        sub = self.pre_token_shuffle_head(t).reshape(n * s, w)
        sub = self.post_token_shuffle_head(sub)
        sub = self.positions.add_learned(sub, grids)
        # compat: the release evaluates bf16 cos/sin of CPU angle tables (B8.1 ⚑), also on GPU
        rope_device = torch.device("cpu") if self.cfg.official_compat else sub.device
        angles = self.positions.angles(grids, rope_device)
        lengths = [h * ww for h, ww in grids]  # attention runs over patches, slots are heads
        for blk in self.fsq_pre_attn:
            sub = blk(sub, lengths, angles)
        if self.cfg.official_compat:
            # release: projection in the model dtype (bf16), fp32 rounding after (B8.1 ⚑)
            return apply_linear(self.project_in, sub)
        with torch.autocast(device_type=sub.device.type, enabled=False):
            return linear_rows(sub.float(), self.project_in.weight.float(),
                               self.project_in.bias.float())

    def _decode_slots(self, values: torch.Tensor) -> torch.Tensor:
        """Quantized (S·N, q) → folded (N, W): project_out, then the inverse token shuffle."""
        s, w = self.cfg.expand, self.stage_width
        # The release casts the fp32 grid values to the model dtype first (bf16: 1/3 → 0.33398).
        sub = apply_linear(self.project_out, values.to(self.project_out.weight.dtype))
        # (S·N, W) -> (N, S·W): fold the slots of a patch back into one token
        return self.inverse_token_shuffle_head(sub.reshape(-1, s * w))

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        """Bottleneck out (paper layout), post-process MLPs, learned affine (B2 steps 7–9)."""
        if self.cfg.layout == "paper":
            t = apply_linear(self.bottleneck_out, t)
        t = self.postprocess_layers(t)
        return t * self.post_affine_weight + self.post_affine_bias

    @torch.no_grad()
    def calibrate_project_in(self, x: Packed, target_std: float = 1.0) -> torch.Tensor:
        """Data-dependent init (LSUV-style) of ``project_in`` for a freshly built head.

        A random head squeezes the quantizer input towards 0, so all tokens fall on one FSQ level;
        this rescales ``project_in`` (weight and bias) per output channel so that the quantizer
        input on the sample ``x`` has mean 0 and std ``target_std``. Returns the per-channel std
        before calibration. Only for fresh models (tests, demos, the start of training).
        """
        if not self.expanded:
            raise ValueError("calibrate_project_in: this head has no project_in (paper 2-1 layout)")
        z = self._encode_slots(self._stage_input(x), x.grids).float()
        mean, std = z.mean(dim=0), z.std(dim=0).clamp_min(1e-12)
        scale = target_std / std
        w = self.project_in.weight
        w.copy_((w.float() * scale[:, None]).to(w.dtype))
        b = self.project_in.bias
        b.copy_(((b.float() - mean) * scale).to(b.dtype))
        return std

    #: The non-residual linears between the bottleneck and the quantizer and back, in forward
    #: order: at a fresh start (stage 2-2) their small init shrinks the signal ~10× per layer.
    FRESH_CHAIN = ("pre_token_shuffle_head.fc1", "pre_token_shuffle_head.fc2",
                   "post_token_shuffle_head.fc1", "post_token_shuffle_head.fc2", "project_in",
                   "project_out", "inverse_token_shuffle_head.fc1",
                   "inverse_token_shuffle_head.fc2")

    @torch.no_grad()
    def calibrate_fresh(self, x: Packed) -> dict[str, float]:
        """Data-dependent init (LSUV) of the freshly built expansion/quantization path.

        With the small init of `_init_weights`, a fresh 2-2 path at demo widths squeezes the
        quantizer input to std ~1e-3 and hands ~1e-3 back to ``bottleneck_out``: one code for
        every token, and the stage-2-1 features erased. Rescaling ``project_in`` alone (see
        `calibrate_project_in`) leaves a ~1000× gain on a path that the first optimizer steps
        then push into the FSQ bound's saturation, where every token falls on one corner code.
        This rescales each linear of `FRESH_CHAIN` in forward order so that its output on the
        sample ``x`` has std 1 (``project_in`` also mean 0: the FSQ input), and the last one so
        that ``bottleneck_out`` receives the spread it was trained on in stage 2-1 (the
        proximal bound's output, paper layout). Returns each layer's output std before.
        """
        if not self.expanded:
            raise ValueError("calibrate_fresh: this head has no quantization path (paper 2-1 "
                             "layout)")
        target_last = 1.0
        if self.cfg.layout == "paper":
            from viq.quant import Proximal

            bound = Proximal(self.stage_width, bound=self.cfg.bound)
            target_last = float(bound(self._stage_input(x).float()).values.std())
        before: dict[str, float] = {}
        for name in self.FRESH_CHAIN:
            lin = self.get_submodule(name)
            out = self._output_of(name, x).float().reshape(-1, lin.out_features)
            before[name] = float(out.std())
            if name == "project_in":  # the FSQ input: per channel, centred
                scale = 1.0 / out.std(dim=0).clamp_min(1e-12)
                lin.bias.copy_((lin.bias - out.mean(dim=0)) * scale)
                lin.weight.mul_(scale[:, None])
            else:
                target = target_last if name == self.FRESH_CHAIN[-1] else 1.0
                scale = target / max(before[name], 1e-12)
                lin.bias.mul_(scale)
                lin.weight.mul_(scale)
        return before

    def _output_of(self, name: str, x: Packed) -> torch.Tensor:
        """The output of the linear ``name`` of `FRESH_CHAIN` in a forward on ``x``."""
        if name == "project_in":
            return self.forward(x).pre_quant
        seen: list[torch.Tensor] = []
        if name == "project_out":  # applied functionally: read the next layer's input
            hook = self.inverse_token_shuffle_head.fc1.register_forward_pre_hook(
                lambda m, args: seen.append(args[0]))
        else:
            hook = self.get_submodule(name).register_forward_hook(
                lambda m, args, out: seen.append(out))
        try:
            self.forward(x)
        finally:
            hook.remove()
        return seen[0]

    # -- codes → features -----------------------------------------------------------------------

    def embed(self, codes: torch.Tensor, grids: Sequence[tuple[int, int]]) -> Packed:
        """Integer codes (S·N,) patch-major → features (Packed, per_token=1).

        The decode half only (docs/design.md B3.1): implicit codebook → project_out → fold → post →
        affine. No attention, so each patch is decoded on its own.
        """
        if not self.has_codes:
            raise ValueError(f"head.quantizer={self.cfg.quantizer!r} has no discrete codes; "
                             "only an FSQ head can embed codes")
        dtype = self.project_out.weight.dtype
        flat = codes.reshape(-1).to(self.project_out.weight.device)
        values = self.quantizer.codes_to_values(flat, dtype=dtype)
        return Packed(self._finish(self._decode_slots(values)), tuple(grids), 1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
