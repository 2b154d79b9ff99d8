"""The demo's real photos: which are evaluated, and crops of the others for the code decoder.

The photos are the ones that ship with viq (`viq.data.bundled.bundled_photos`: the cat, then
public-domain / CC0 / CC BY photos from scikit-image's and scikit-learn's sample data, re-encoded
and shipped in ``viq/assets/photos``), never whatever else is installed: the README's plain
install and a developer's environment run the same demo (docs/design.md C38). The first
``DemoPlan.photos`` are **evaluated** (the report's photo row); the others are **cut into
crops** for the code decoder's training set (`write_decoder_data`), never the evaluated ones.

    data/decoder.json        the training split's records + one record per photo crop
    data/photo_crops/*.png   crops of the training photos (seeded sizes, aspect ratios, places)

Why crops of photos: the tokenizer trains on synthetic images only, so on a photo its codes are
out of distribution; a decoder that never saw such codes draws them as the synthetic colours it
knows. Trained also on crops of other photos, it draws the evaluated photos' coarse colours and
layout (docs/demo.md, "Reconstructions"). A crop's record asks nothing of the image ("Describe
the image." → "A photograph."): the decoder stage has no text loss, and the loader wants a turn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from viq.data.images import load_image


def evaluation_photos(limit: int) -> list[Path]:
    """The first ``limit`` of the photos that ship with viq (the cat first)."""
    return _all_photos()[:limit]


def training_photos(limit: int) -> list[Path]:
    """Every shipped photo that `evaluation_photos` (``limit``) does not evaluate."""
    return _all_photos()[limit:]


def _all_photos() -> list[Path]:
    from viq.data.bundled import bundled_photos

    return bundled_photos()


CROP_TURNS = [{"from": "human", "value": "<image>\nDescribe the image."},
              {"from": "gpt", "value": "A photograph."}]


def _crops(photo: Path, n: int, rng: np.random.Generator) -> list:
    """``n`` crops of one photo: side 96–448 px (at most the photo's), aspect 1:2 to 2:1."""
    img = load_image(photo, name=str(photo))
    w, h = img.size
    out = []
    for _ in range(n):
        side = int(rng.integers(min(96, w, h), min(448, w, h) + 1))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        cw = max(32, min(w, round(side * aspect ** 0.5)))
        ch = max(32, min(h, round(side / aspect ** 0.5)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(img.crop((x, y, x + cw, y + ch)))
    return out


def write_decoder_data(data: Path, evaluated: int, crops_per_photo: int, seed: int = 0) -> Path:
    """``data/decoder.json``: the training split plus ``crops_per_photo`` crops of every photo
    not among the first ``evaluated`` (written once; a partial write is redone)."""
    target = data / "decoder.json"
    if target.is_file():
        return target
    folder, tmp = data / "photo_crops", data / "photo_crops.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir()
    records = json.loads((data / "train.json").read_text())
    rng = np.random.default_rng(seed)
    for photo in training_photos(evaluated) if crops_per_photo else []:
        for i, crop in enumerate(_crops(photo, crops_per_photo, rng)):
            name = f"{photo.stem}_{i:03d}.png"
            crop.save(tmp / name)
            records.append({"id": f"photo_crop/{photo.stem}/{i}",
                            "image": [{"img_path": f"photo_crops/{name}"}],
                            "conversations": CROP_TURNS})
    tmp.rename(folder)
    part = target.with_name(target.name + ".tmp")
    part.write_text(json.dumps(records) + "\n")
    part.replace(target)
    return target
