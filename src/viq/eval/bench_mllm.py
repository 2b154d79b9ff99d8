"""``viq bench mllm-speedup`` — MLLM training, online encoder vs stored codes (SPEC A4).

    viq bench mllm-speedup            # ~minutes on 2 cores
    viq bench mllm-speedup --quick    # seconds (tests)
    viq bench mllm-speedup --device cuda   # on a GPU (timings synchronised with the device)

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
Prints a table and a final JSON line; the paper reports forward −46 … −78 % and whole step
> 20 % (4k) / > 40 % (16k) faster.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig
from viq.data.chat import IGNORE_INDEX, IMAGE_TOKEN_ID, TokenBatch, image_token_count
from viq.model.viq import ViQModel
from viq.supervision.config import LLMConfig

ENCODER = EncoderConfig(width=384, depth=12, heads=6, mlp_dim=1536, pos_grid=16)
LLMS = {"Qwen2 256×8 (small LLM)": dict(hidden=256, layers=8, heads=4, kv_heads=2),
        "Qwen2 512×9 (larger LLM)": dict(hidden=512, layers=9, heads=8, kv_heads=2)}
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def measure(model: ViQModel, text, batch: TokenBatch, images, codes, mode: str,
            repeats: int) -> tuple[float, float]:
    """(forward s, whole step s), medians over ``repeats`` after one warm-up."""
    params = [p for p in text.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    device = model.device
    fwd, step = [], []
    for r in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = model(images).features if mode == "online" else model.embed(codes)
        loss = text(feats, batch)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        if r:
            fwd.append(t1 - t0)
            step.append(t2 - t0)
    fwd.sort()
    step.sort()
    return fwd[len(fwd) // 2], step[len(step) // 2]


def run(quick: bool = False, repeats: int = 3, device: str = "cpu") -> list[dict]:
    from viq.supervision.text import TextSupervision

    enc = QUICK_ENCODER if quick else ENCODER
    llms = QUICK_LLMS if quick else LLMS
    seqs = (128,) if quick else (1024, 4096)
    side = 64 if quick else 224
    cfg = ModelConfig(encoder=enc, image=ImageConfig(resize="native"),
                      head=HeadConfig(heads=enc.heads, pre_blocks=1, headwise_blocks=1,
                                      headwise_dim=32, post_residual=1, levels=(8, 8, 8, 5, 5, 5)))
    torch.manual_seed(0)
    model = ViQModel(cfg).eval().requires_grad_(False).to(device)
    rows = []
    for name, shape in llms.items():
        text = TextSupervision(LLMConfig(source="tiny", rank=16, dropout=0.0, **shape),
                               enc.width).train().to(device)
        ratio = _non_embedding(model) / _non_embedding(text.llm)
        for seq in seqs:
            batch, images = make_batch(seq, side)
            images = [im.to(device) for im in images]
            codes = model.encode(images)
            f_on, s_on = measure(model, text, batch, images, codes, "online", repeats)
            f_st, s_st = measure(model, text, batch, images, codes, "stored", repeats)
            rows.append({"llm": name, "encoder_llm_ratio": round(ratio, 2), "seq": seq,
                         "images": len(images), "forward_online_s": f_on,
                         "forward_stored_s": f_st, "step_online_s": s_on, "step_stored_s": s_st,
                         "forward_saving": 1 - f_st / f_on, "step_speedup": s_on / s_st})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="viq bench mllm-speedup", description=__doc__.split("\n")[0],
                                epilog="See the module docstring / README for what is measured.")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one sequence length")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median; default 3)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    rows = run(args.quick, max(1, args.repeats), args.device)
    print(f"{'LLM':<24}{'enc:LLM':>8}{'seq':>6}{'fwd online':>12}{'fwd stored':>12}"
          f"{'fwd saved':>10}{'step online':>13}{'step stored':>13}{'step ×':>8}")
    for r in rows:
        print(f"{r['llm']:<24}{r['encoder_llm_ratio']:>8}{r['seq']:>6}"
              f"{r['forward_online_s']:>11.3f}s{r['forward_stored_s']:>11.3f}s"
              f"{100 * r['forward_saving']:>9.0f}%{r['step_online_s']:>12.3f}s"
              f"{r['step_stored_s']:>12.3f}s{r['step_speedup']:>7.2f}×")
    print(json.dumps({"bench": "mllm-speedup", "device": args.device, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
