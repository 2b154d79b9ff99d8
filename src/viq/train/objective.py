"""One objective: L = λ_text L_text + λ_distill L_distill + λ_recon L_recon (docs/design.md A2,
B5.1).

`Objective` holds the ViQ model and the supervision modules as children, so that one
``named_parameters()`` covers everything the stages select by name (`viq.train.stages`):
``model`` (encoder + quantizer head), ``text`` (LLM with adapters + projector), ``distill``
(frozen teacher), ``latent`` (latent head or code decoder + frozen VAE). A term whose weight is
zero is not built and its module never called; the data loader still needs a tokenizer, which is
then built alone.

Features for the losses: ``stage.features == "encoder"`` (stage 1) uses the encoder tokens and
pools them with the encoder's MAP head; ``"head"`` (stage 2) uses the head's output ``x_low`` and
pools it with the same MAP head (the release's student, docs/design.md B1.7, C8); ``"codes"`` embeds
stored codes (`viq.codes.storesource`) with the head's decode half — no encoder runs.

With L_recon alone on a frozen tokenizer (the code decoder's stage) each image's regressor input
and VAE target are kept in a `FrozenCache` (``run.frozen_cache_mb``) and reused when the image
comes again (`viq.train.frozen_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from viq.data.loader import Batch
from viq.model.packing import Packed
from viq.model.viq import ImageCodes, ViQModel
from viq.train.config import TrainConfig
from viq.train.frozen_cache import FrozenCache, image_key


@dataclass
class LossOutput:
    """``total``: the weighted sum (a 0-d tensor with grad); ``terms``: each unweighted term;
    ``stats``: detached logging values (code usage / perplexity with FSQ); ``codes``: flat codes of
    the batch (FSQ) or None."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None


def build_tokenizer(cfg: TrainConfig):
    """The tokenizer of the run's LLM (also when L_text is off: the loader packs tokens)."""
    from viq.backends.llm import load_tokenizer

    return load_tokenizer("qwen2" if cfg.llm.source == "tiny" else cfg.llm.source)


class Objective(nn.Module):
    """Model + supervision, built from a `TrainConfig` (its stage decides what is built)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = cfg.stage.losses.active()
        mcfg = cfg.stage_model()
        torch.manual_seed(cfg.run.seed)
        self.model = ViQModel(mcfg)
        width = mcfg.encoder.width
        if "text" in self.weights:
            from viq.supervision.text import TextSupervision

            self.text = TextSupervision(cfg.llm, width)
            self.tokenizer = self.text.tokenizer
        else:
            self.tokenizer = build_tokenizer(cfg)
        if "distill" in self.weights:
            from viq.supervision.distill import DistillSupervision

            self.distill = DistillSupervision(cfg.teacher, width)
        if "recon" in self.weights:
            from viq.supervision.latent import LatentSupervision

            self.latent = LatentSupervision(cfg.vae, width, mcfg.encoder.heads,
                                            code_dim=self.model.code_dim)
        # used only while the tokenizer is frozen (checked each step: the trainer sets it)
        self.cache = (FrozenCache(cfg.run.frozen_cache_mb)
                      if set(self.weights) == {"recon"} and cfg.run.frozen_cache_mb > 0 else None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def features(self, images: list[torch.Tensor],
                 pool: bool) -> tuple[Packed, torch.Tensor | None, dict, torch.Tensor | None]:
        """Images → (features for the losses, pooled vector, quantizer stats, flat codes)."""
        images = [im.to(self.model.device) for im in images]
        # stored codes (h, w, 4): no encoder (docs/design.md A4)
        if self.cfg.stage.features == "codes":
            feats = self.model.embed([ImageCodes(c, self.model.levels) for c in images])
            return feats, None, {}, torch.cat([c.reshape(-1) for c in images])
        if self.cfg.stage.features == "encoder":
            enc = self.model.encoder(images, pool=pool)
            return enc.tokens, enc.pooled, {}, None
        out = self.model(images, pool=pool)
        codes = out.head.codes if out.head is not None else None
        return out.features, out.pooled, dict(out.stats), codes

    def latent_input(self, feats: Packed, codes: torch.Tensor | None) -> Packed:
        """What the latent regressor reads: the features, or (the code decoder, ``vae.head =
        "codes"``) the flat codes' grid values on the features' grids."""
        if not self.latent.reads_codes:
            return feats
        return self.model.code_values(codes, feats.grids)

    def forward(self, batch: Batch) -> LossOutput:
        """One micro-batch → the weighted total and each term (terms with weight 0 skipped)."""
        images = list(batch.images)
        terms: dict[str, torch.Tensor] = {}
        feats = pooled = codes = None
        stats: dict[str, torch.Tensor] = {}
        if images:
            # a frozen tokenizer (MLLM stages) runs without building a graph
            frozen = not any(p.requires_grad for p in self.model.parameters())
            if frozen and self.cache is not None:
                loss = self._cached_recon(images)
                return LossOutput(self.weights["recon"] * loss, {"recon": loss})
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                feats, pooled, stats, codes = self.features(images,
                                                            pool="distill" in self.weights)
        if "text" in self.weights:
            tokens = _to_device(batch.tokens, self.model.device)
            terms["text"] = self.text(feats, tokens)
        if "distill" in self.weights and images:
            terms["distill"] = self.distill(images, pooled)
        if "recon" in self.weights and images:
            terms["recon"] = self.latent(self.latent_input(feats, codes), images)
        if not terms:
            raise ValueError("the batch gives no loss term (no images and no text weight)")
        total = sum(self.weights[k] * v for k, v in terms.items())
        return LossOutput(total, terms, {k: v.detach() for k, v in stats.items()}, codes)


    def _cached_recon(self, images: list[torch.Tensor]) -> torch.Tensor:
        """L_recon with the frozen tokenizer's output and the VAE target of each image taken
        from the cache; the images not in it yet are computed together and kept."""
        keys = [image_key(im) for im in images]
        found = [self.cache.get(k) for k in keys]
        new = [i for i, f in enumerate(found) if f is None]
        if new:
            with torch.no_grad():
                feats, _, _, codes = self.features([images[i] for i in new], pool=False)
                inputs = self.latent_input(feats, codes)
                targets = self.latent.target([images[i] for i in new])
            for j, (x, t) in enumerate(zip(inputs.split(), targets, strict=True)):
                found[new[j]] = (x, t, inputs.grids[j])
                self.cache.put(keys[new[j]], found[new[j]])
        dev = self.model.device
        # one row a patch: the head's features and the code values alike
        packed = Packed(torch.cat([x.to(dev) for x, _, _ in found]),
                        tuple(g for _, _, g in found), 1)
        return self.latent.loss(packed, [t.to(dev) for _, t, _ in found])


def _to_device(tokens, device: torch.device):
    if device.type == "cpu":
        return tokens
    import dataclasses

    moved = {f.name: (getattr(tokens, f.name).to(device)
                      if isinstance(getattr(tokens, f.name), torch.Tensor)
                      else getattr(tokens, f.name)) for f in dataclasses.fields(tokens)}
    return type(tokens)(**moved)


def build_objective(cfg: TrainConfig, device: str | torch.device = "cpu") -> Objective:
    """Build the objective (fresh weights; ``stage.init_from`` is loaded by the caller)."""
    return Objective(cfg).to(device)
