"""``viq bench data`` — does the training input keep up with a training step?

    viq bench data --samples 96 --workers 2

Builds a small LLaVA dataset — ``--source toy``: random-size noise images ≤ 160 px, 0–2 per sample,
multi-turn, resized to 64–96 px; ``--source synth``: the synthetic VQA benchmark (`viq data synth`,
native sizes 128–768 px, PNG) resized by ``--resize`` (default 384x32, ~576 patches per image) —
then measures side by side in one process:

1. loader throughput (samples/s) of `viq.data.loader.DataStream` with 0 workers and with N workers
   (image decode + resize + tokenize + pack, for the JSON source and for tar shards);
2. the samples/s of a tiny training step on the same batches: a tiny `ViTEncoder` on the batch's
   images, a linear projection scattered into the image slots, a tiny random Qwen2 forward/backward
   on the packed rows, AdamW step.

Prints a table and a final JSON line. The loader "keeps up" when its samples/s with workers exceeds
the step's samples/s. Timings are noisy on shared machines: compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from viq.config import ImageConfig
from viq.data.chat import IMAGE_TOKEN_ID, per_sample_loss
from viq.data.loader import Batch, DataConfig, DataStream, PackedDataset, open_source
from viq.data.shards import write_shards

WORDS = ("red blue green cat dog tree house car sky river stone light small large round square "
         "left right top bottom two three four bright dark").split()


def make_toy_llava(out_dir: str | Path, n: int, seed: int = 0, max_side: int = 160,
                   fmt: str = "png") -> Path:
    """Write ``n`` LLaVA records (0–2 random images each, 1–2 turns) + images; return the json."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        n_img = rng.choice((0, 1, 1, 2))
        images = []
        for j in range(n_img):
            w, h = rng.randint(32, max_side), rng.randint(32, max_side)
            px = torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(
                seed * 100003 + i * 7 + j), dtype=torch.uint8).numpy()
            name = f"images/{i:05d}_{j}.{fmt}"
            Image.fromarray(px).save(out / name)
            images.append({"img_path": name, "resize": rng.choice(("64x32", "96x32", [64, 96]))})
        conv = []
        for t in range(rng.randint(1, 2)):
            q = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + "?"
            if t == 0 and n_img:
                q = "<image>\n" * n_img + q
            conv += [{"from": "human", "value": q},
                     {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))}]
        rec = {"id": f"toy{i}", "conversations": conv}
        if images:
            rec["image"] = images
        records.append(rec)
    path = out / "data.json"
    path.write_text(json.dumps(records))
    return path


def loader_rate(dataset: PackedDataset, workers: int, max_batches: int) -> tuple[float, int]:
    """(samples/s, samples) over up to ``max_batches`` batches (first batch excluded: start-up)."""
    stream = DataStream(dataset, num_workers=workers)
    n, t0 = 0, None
    for k, batch in enumerate(stream):
        if k == 0:
            t0 = time.perf_counter()
            continue
        n += batch.num_samples
        if k >= max_batches:
            break
    dt = time.perf_counter() - (t0 or time.perf_counter())
    return (n / dt if dt > 0 else 0.0), n


class TinyStep:
    """Tiny ViT + projector + tiny Qwen2: one forward/backward/AdamW step on a `Batch`."""

    def __init__(self, vocab: int, hidden: int = 32) -> None:
        from viq.backends.llm import tiny_qwen2
        from viq.model.vit import ViTEncoder
        from viq.presets import tiny

        torch.manual_seed(0)
        self.vit = ViTEncoder(tiny().encoder)
        self.proj = torch.nn.Linear(self.vit.cfg.width, hidden)
        self.llm = tiny_qwen2(vocab, hidden=hidden).train()
        params = [*self.vit.parameters(), *self.proj.parameters(), *self.llm.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-4)

    def __call__(self, batch: Batch) -> float:
        tb = batch.tokens
        ids = tb.input_ids
        emb = self.llm.get_input_embeddings()(ids.clamp_min(0))  # (B, L, H)
        slots = ids == IMAGE_TOKEN_ID
        if batch.images:
            feats = self.proj(self.vit(batch.images).tokens.tokens)  # (N_patches, H)
            # a stand-in for the 2×2 projector: cycle patch features over each image's slots
            rows = []
            for piece, n in zip(torch.split(feats, [h * w for h, w in batch.grids]),
                                tb.image_tokens, strict=True):
                rows.append(piece[torch.arange(n) % piece.shape[0]])
            emb = emb.masked_scatter(slots[..., None], torch.cat(rows))
        out = self.llm(inputs_embeds=emb, **tb.model_inputs("position"))
        loss = per_sample_loss(out.logits, tb.labels, tb.segment_ids).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def step_rate(step: TinyStep, batches: list[Batch]) -> float:
    step(batches[0])  # warm-up
    t0, n = time.perf_counter(), 0
    for b in batches[1:] or batches:  # a one-batch set is timed on its (warm) batch again
        step(b)
        n += b.num_samples
    return n / (time.perf_counter() - t0)


def make_synth_llava(out_dir: str | Path, n: int, seed: int, resize: str) -> Path:
    """The synthetic VQA benchmark's train split with every image's ``resize`` set; its json."""
    from viq.data.synth import SynthConfig, write_json_dataset

    write_json_dataset(SynthConfig(n=n, seed=seed, splits=(1.0, 0.0, 0.0), resize=resize), out_dir)
    return Path(out_dir) / "train.json"


def run(samples: int, workers: int, max_tokens: int, seed: int, source: str = "toy",
        resize: str = "384x32") -> dict:
    from viq.backends.llm import qwen2_tokenizer

    tok = qwen2_tokenizer()
    img_cfg = ImageConfig(resize="96x32" if source == "toy" else resize)
    cfg = DataConfig(max_tokens=max_tokens, seed=seed)
    res: dict = {"source": source, "samples": samples, "workers": workers,
                 "max_tokens": max_tokens}
    if source == "synth":
        res["resize"] = resize
    with tempfile.TemporaryDirectory() as tmp:
        if source == "synth":
            data = make_synth_llava(Path(tmp) / "json", samples, seed, resize)
        else:
            data = make_toy_llava(Path(tmp) / "json", samples, seed)
        shard_dir = Path(tmp) / "shards"
        write_shards(json.loads(data.read_text()), shard_dir, samples_per_shard=max(
            1, samples // 8), image_root=data.parent)
        for name, path in (("json", data), ("shards", shard_dir)):
            for w in (0, workers):
                ds = PackedDataset(open_source(path, cfg=cfg), tok, img_cfg, cfg, epochs=None)
                rate, _ = loader_rate(ds, w, max_batches=max(4, samples // 4))
                res[f"loader_{name}_w{w}_samples_per_s"] = round(rate, 1)
        ds = PackedDataset(open_source(data, cfg=cfg), tok, img_cfg, cfg, epochs=1)
        batches = list(DataStream(ds, num_workers=0))
        res["step_samples_per_s"] = round(step_rate(TinyStep(len(tok)), batches), 1)
    res["keeps_up"] = res[f"loader_json_w{workers}_samples_per_s"] > res["step_samples_per_s"]
    return res
