"""The vision → LLM projector (docs/design.md B3.2, the release's ``OryxMLPv2``; C3).

Per image, (h·w, C) patch features → (image_token_count(grid), H) LLM input embeddings:

1. ``proj1`` Linear(C → H) on every patch, giving an (h, w, H) map.
2. ``pooler`` (`NormalizedDwPooler`): 2×2 windows; each member x_i gets a per-channel score
   ``predictor([x_i ; m])`` (m = window mean; predictor = Linear(2H→H) → GELU → Linear(H→H)); a
   softmax over the 4 members per channel weights the sum Σ softmax_i ⊙ x_i → (h/2, w/2, H).
3. Exact GELU, then ``proj2`` Linear(H → H).
4. A learned ``image_newline`` after each pooled row, ``image_begin`` first, ``image_end`` last:
   (h/2)·(w/2 + 1) + 2 tokens (`viq.data.chat.image_token_count`). The three vectors are
   initialised N(0, 1/H) as released.

Parameter names equal the release's (``proj1``, ``pooler.predictor.0/.2``, ``proj2``,
``image_newline``, ``image_begin``, ``image_end``), plus ``out_gain``: a learned scalar on the
pooled tokens, 1 at construction (the release's projector), set by `Projector.calibrate` at a
fresh start of training.

Deviation (C3): the release requires even grids. Here an odd h or w is padded after
``proj1`` by **replicating** the last row/column (``F.pad(mode="replicate")``), so a padded window
pools only real features: a 1×1 grid gives back its one projected patch, and a window with two
real members duplicated gives their own softmax blend. Zero padding would instead add a zero
member that takes softmax weight and shrinks the pooled vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from viq.model.packing import Packed


class NormalizedDwPooler(nn.Module):
    """Learned 2×2 pooling with per-channel softmax weights over the window (docs/design.md B3.2
    step 2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.predictor = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(h, w, H) with even h, w → (h/2, w/2, H)."""
        h, w, c = x.shape
        # (h, w, H) -> (h/2, 2, w/2, 2, H) -> (h/2, w/2, 4, H): the 4 members of each window
        x = x.reshape(h // 2, 2, w // 2, 2, c).permute(0, 2, 1, 3, 4).reshape(h // 2, w // 2, 4, c)
        m = x.mean(dim=2, keepdim=True).expand_as(x)
        score = self.predictor(torch.cat([x, m], dim=-1))  # (h/2, w/2, 4, H)
        return (score.softmax(dim=2) * x).sum(dim=2)


class Projector(nn.Module):
    """Packed vision features (width ``in_dim``) → per-image LLM token blocks (width ``llm_dim``).

    Runs in the dtype of its parameters (cast it with the LLM); features are cast on entry.
    """

    def __init__(self, in_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.in_dim, self.llm_dim = in_dim, llm_dim
        self.proj1 = nn.Linear(in_dim, llm_dim)
        self.pooler = NormalizedDwPooler(llm_dim)
        self.proj2 = nn.Linear(llm_dim, llm_dim)
        std = llm_dim ** -0.5  # N(0, 1/H), as the release initialises them
        self.image_newline = nn.Parameter(torch.randn(llm_dim) * std)
        self.image_begin = nn.Parameter(torch.randn(llm_dim) * std)
        self.image_end = nn.Parameter(torch.randn(llm_dim) * std)
        # a learned scalar on the pooled tokens (not in the release: 1 leaves its projector
        # unchanged); `calibrate` sets it so that proj2 keeps its default scale
        self.out_gain = nn.Parameter(torch.ones(1))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj1.weight.dtype

    def pooled(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One image's projected patches (h·w, H) → its pooled tokens (⌈h/2⌉, ⌈w/2⌉, H)."""
        h, w = grid
        x = x.reshape(h, w, self.llm_dim)  # raster order over the patch grid
        if h % 2 or w % 2:  # odd grid: replicate the last row / column (module docstring)
            # (h, w, H) -> (1, H, h, w) for F.pad, padded to even, and back
            img = F.pad(x.permute(2, 0, 1)[None], (0, w % 2, 0, h % 2), mode="replicate")
            x = img[0].permute(1, 2, 0)
        return self.proj2(F.gelu(self.pooler(x))) * self.out_gain

    def pooled_images(self, features: Packed) -> list[torch.Tensor]:
        """Per image its pooled tokens (⌈h/2⌉, ⌈w/2⌉, H), before the marker vectors."""
        x = self.proj1(features.tokens.to(self.dtype))  # one matmul over all images: (N, H)
        return [self.pooled(t, g)
                for t, g in zip(torch.split(x, features.lengths), features.grids, strict=True)]

    def with_markers(self, x: torch.Tensor) -> torch.Tensor:
        """One image's pooled tokens (h', w', H) → its token block (tokens, H)."""
        hp = x.shape[0]
        newline = self.image_newline.view(1, 1, -1).expand(hp, 1, -1)
        x = torch.cat([x, newline], dim=1).reshape(-1, self.llm_dim)  # (h'·(w'+1), H)
        return torch.cat([self.image_begin[None], x, self.image_end[None]], dim=0)

    @torch.no_grad()
    def calibrate(self, features: Packed, target_norm: float) -> float:
        """Data-dependent init of a fresh projector: set ``out_gain`` so that the image tokens of
        ``features`` have the mean L2 norm ``target_norm`` (the LLM's own input embeddings),
        and scale the three learned marker vectors to it too. Returns the mean norm before.

        Untrained features reach the LLM at ~20× the norm of its word embeddings (measured on
        the demo: 70 vs 3.2); such tokens pass the pre-norm residual stream almost unchanged,
        so the LLM cannot process them like words and a small fine-tuning budget learns to
        ignore the image (the answer loss with blank images equalled the loss with the real
        ones). The scale goes into one scalar, not into ``proj2``'s weights: Adam moves every
        weight by ~lr a step whatever its size, so a ``proj2`` shrunk 20× grew back within a few
        hundred steps (image tokens at norm 110–170 after the demo's stage 1, against 2.8 for
        words; docs/demo.md)."""
        pooled = torch.cat([p.reshape(-1, self.llm_dim) for p in self.pooled_images(features)])
        before = float(pooled.float().norm(dim=-1).mean())
        self.out_gain.mul_(target_norm / max(before, 1e-12))
        for v in (self.image_newline, self.image_begin, self.image_end):
            v.mul_(target_norm / max(float(v.float().norm()), 1e-12))
        return before

    def forward(self, features: Packed | None) -> list[torch.Tensor]:
        """Per image an (image_token_count(grid), llm_dim) tensor in the projector's dtype."""
        if features is None or len(features) == 0:
            return []
        if features.per_token != 1:
            raise ValueError(f"Projector: expects one feature row per patch, got per_token="
                             f"{features.per_token} (fold the sub-tokens first)")
        if features.tokens.shape[-1] != self.in_dim:
            raise ValueError(f"Projector: features have width {features.tokens.shape[-1]}, "
                             f"expected {self.in_dim}")
        return [self.with_markers(x) for x in self.pooled_images(features)]
