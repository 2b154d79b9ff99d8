"""``viq bench mllm-speedup`` — MLLM training, online encoder vs stored codes (docs/design.md A4).

    viq bench mllm-speedup            # ~minutes on 2 cores
    viq bench mllm-speedup --quick    # seconds (tests)
    viq bench mllm-speedup --device cuda   # on a GPU (timings synchronised with the device)
    viq bench mllm-speedup --paper --device cuda --dtype bf16   # the paper's sizes (a big GPU)

The same LLM (a real `Qwen2ForCausalLM`, random weights, LoRA), the same projector and the same
packed rows are trained two ways, side by side in one process:

- online: the frozen ViQ tokenizer (encoder + quantizer head) runs on the batch's images every step
  (forward only, no graph: it is frozen, as in MLLM training on a frozen tokenizer),
- stored: the batch's codes are embedded with the decode half of the head (`ViQModel.embed`) — no
  encoder in the process, as after ``viq extract``.

Measured per configuration: forward time (features + LLM forward + loss) and whole-step time
(+ backward + AdamW). Configurations scale the paper's down: two sequence lengths (1k and 4k tokens
per row, standing for 4k / 16k) and two LLM sizes; the encoder : LLM ratio of non-embedding
parameters is printed (measured 6.3 and 1.6 with these shapes; the paper's SigLIP2-g vs
Qwen2.5-0.5B / -1.5B are ≈ 2.2 and 0.7 — the first row is encoder-heavier than the paper's).
Images are 224² (14×14 patches → 58 LLM tokens each) and fill about half of every row.
``--paper`` runs the paper's setting instead (docs/design.md A4): the SigLIP2-g encoder (width 1536,
depth 40) with the 64k head beside randomly initialised Qwen2.5-0.5B- and -1.5B-shaped LLMs (the
published configs, `viq.supervision.meta.KNOWN_LLMS`; LoRA r=64), rows of 4,096 and 16,384 tokens,
768² images (602 LLM tokens each). It needs a large GPU (fp32 master weights, ~10 GB of weights
and optimiser state, tens of GB of activations at 16k tokens); ``--dtype bf16`` runs the forward
passes under bf16 autocast, as training does.
Prints a table and a final JSON line; the paper reports forward −46 … −78 % and whole step
> 20 % (4k) / > 40 % (16k) faster.
"""

from __future__ import annotations

import time

import torch

from viq.bench.timing import autocast, sync
from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig
from viq.data.chat import IGNORE_INDEX, IMAGE_TOKEN_ID, TokenBatch, image_token_count
from viq.model.viq import ViQModel
from viq.supervision.config import LLMConfig

ENCODER = EncoderConfig(width=384, depth=12, heads=6, mlp_dim=1536, pos_grid=16)
LLMS = {"Qwen2 256×8 (small LLM)": dict(hidden=256, layers=8, heads=4, kv_heads=2),
        "Qwen2 512×9 (larger LLM)": dict(hidden=512, layers=9, heads=8, kv_heads=2)}
PAPER_LLMS = {"Qwen2.5-0.5B shape": "Qwen2.5-0.5B", "Qwen2.5-1.5B shape": "Qwen2.5-1.5B"}
QUICK_ENCODER = EncoderConfig(width=64, depth=2, heads=2, mlp_dim=128, pos_grid=8)
QUICK_LLMS = {"quick": dict(hidden=32, layers=2, heads=4, kv_heads=2)}


def _non_embedding(module: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters()
               if "embed" not in n and "lm_head" not in n)


def make_batch(seq: int, side: int, seed: int = 0) -> tuple[TokenBatch, list[torch.Tensor]]:
    """One packed row of ``seq`` tokens: samples of one image + ~image-sized text each."""
    g = torch.Generator().manual_seed(seed)
    grid = (side // 16, side // 16)
    n_img = image_token_count(grid)
    per = 2 * n_img
    n = max(1, seq // per)
    ids, labels, pos, seg = [], [], [], []
    for i in range(n):
        text = torch.randint(10, 5000, (per - n_img,), generator=g).tolist()
        ids += [IMAGE_TOKEN_ID] * n_img + text
        labels += [IGNORE_INDEX] * n_img + [IGNORE_INDEX] * (len(text) - 8) + text[-8:]
        pos += list(range(per))
        seg += [i] * per
    pad = seq - len(ids)
    ids += [0] * pad
    labels += [IGNORE_INDEX] * pad
    pos += list(range(pad))
    seg += [-1] * pad
    t = lambda x: torch.tensor([x])  # noqa: E731
    batch = TokenBatch(t(ids), t(labels), t(pos), t(seg), torch.tensor([0, seq], dtype=torch.int32),
                       [f"s{i}" for i in range(n)], [n_img] * n)
    images = [torch.rand(3, side, side, generator=g) * 2 - 1 for _ in range(n)]
    return batch, images


def measure(model: ViQModel, text, batch: TokenBatch, images, codes, mode: str,
            repeats: int, dtype: str = "fp32") -> tuple[float, float]:
    """(forward s, whole step s), medians over ``repeats`` after one warm-up; ``dtype`` bf16 runs
    the forward passes under bf16 autocast (fp32 weights and optimiser, as training does)."""
    params = [p for p in text.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    device = model.device
    fwd, step = [], []
    for r in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            with torch.no_grad():
                feats = model(images).features if mode == "online" else model.embed(codes)
            loss = text(feats, batch)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        if r:
            fwd.append(t1 - t0)
            step.append(t2 - t0)
    return sorted(fwd)[len(fwd) // 2], sorted(step)[len(step) // 2]


def setup(quick: bool = False, paper: bool = False) -> tuple[ModelConfig, dict, tuple, int]:
    """(tokenizer config, {name: LLMConfig}, sequence lengths, image side) of a configuration."""
    if quick and paper:
        raise ValueError("choose --quick or --paper, not both")
    if paper:
        from viq.presets import siglip2_g

        g = siglip2_g()
        cfg = ModelConfig(encoder=g.encoder, image=ImageConfig(resize="native"), head=g.head)
        llms = {name: LLMConfig(source=src, rank=64, alpha=16.0, dropout=0.0)
                for name, src in PAPER_LLMS.items()}
        return cfg, llms, (4096, 16384), 768
    enc = QUICK_ENCODER if quick else ENCODER
    cfg = ModelConfig(encoder=enc, image=ImageConfig(resize="native"),
                      head=HeadConfig(heads=enc.heads, pre_blocks=1, headwise_blocks=1,
                                      headwise_dim=32, post_residual=1, levels=(8, 8, 8, 5, 5, 5)))
    llms = {name: LLMConfig(source="tiny", rank=16, dropout=0.0, **shape)
            for name, shape in (QUICK_LLMS if quick else LLMS).items()}
    return cfg, llms, (128,) if quick else (1024, 4096), 64 if quick else 224


def build_text(llm: LLMConfig, width: int, device: str):
    """The LLM (random weights: ``tiny`` or a published architecture by name, built from its
    config alone) with LoRA and the projector, on ``device``."""
    from viq.supervision.text import TextSupervision

    with torch.device(device):
        return TextSupervision(llm, width, meta=llm.source != "tiny").train()


def run(quick: bool = False, repeats: int = 3, device: str = "cpu", paper: bool = False,
        dtype: str = "fp32") -> list[dict]:
    cfg, llms, seqs, side = setup(quick, paper)
    torch.manual_seed(0)
    model = ViQModel(cfg).eval().requires_grad_(False).to(device)
    rows = []
    for name, llm in llms.items():
        text = build_text(llm, cfg.encoder.width, device)
        ratio = _non_embedding(model) / _non_embedding(text.llm)
        for seq in seqs:
            batch, images = make_batch(seq, side)
            images = [im.to(device) for im in images]
            codes = model.encode(images)
            f_on, s_on = measure(model, text, batch, images, codes, "online", repeats, dtype)
            f_st, s_st = measure(model, text, batch, images, codes, "stored", repeats, dtype)
            rows.append({"llm": name, "encoder_llm_ratio": round(ratio, 2), "seq": seq,
                         "images": len(images), "forward_online_s": f_on,
                         "forward_stored_s": f_st, "step_online_s": s_on, "step_stored_s": s_st,
                         "forward_saving": 1 - f_st / f_on, "step_speedup": s_on / s_st})
        del text
    return rows
