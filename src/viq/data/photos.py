"""Real photographs that ship inside pip packages: an offline evaluation set for reconstruction
(docs/design.md C29; written by ``viq data photos``, `viq.cli.data`).

Sources (all files inside the installed packages; nothing is downloaded): scikit-image's bundled
``skimage/data`` (astronaut, chelsea, coffee, rocket, hubble_deep_field, retina,
immunohistochemistry, stereo_motorcycle (left view), and the grayscale camera, coins, page, text),
scikit-learn's ``load_sample_images`` files (china, flower) and matplotlib's sample
``grace_hopper.jpg``. scikit-image fetches some other images from the internet on first use; only
files present in the installed package are listed, so those are never touched. Files are read
directly (not through the packages' loaders, which may try the network), written at native
resolution as PNG (grayscale stays grayscale) with a ``photos.json`` manifest: name, source package
and version, file inside the package, width, height, mode and the license note the package states.

Install the sources with ``pip install -e '.[photos]'`` from a source checkout (or
``pip install scikit-image scikit-learn matplotlib``). With no photo available nothing is written
(no empty ``photos.json``): `write_photos` raises FileNotFoundError.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

from PIL import Image

PIP_EXTRA = ("pip install -e '.[photos]'  (from the viq source folder; or: pip install "
             "scikit-image scikit-learn matplotlib)")
_NOT_STATED = None  # the package states no license for this file


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """A photo file inside an installed package."""

    name: str
    package: str  # import name
    distribution: str  # pip name
    relpath: str  # inside the package folder
    license: str | None


_SK, _SKL, _MPL = ("skimage", "scikit-image"), ("sklearn", "scikit-learn"), (
    "matplotlib", "matplotlib")
_SKL_NOTE = ("CC BY 2.0, Flickr user {}; per scikit-learn's datasets/images/README.txt")
CATALOGUE: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", *_SK, "data/astronaut.png",
                "No known copyright restrictions, released into the public domain (NASA)."),
    PhotoSource("chelsea", *_SK, "data/chelsea.png",
                "No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."),
    PhotoSource("coffee", *_SK, "data/coffee.png",
                "No copyright restrictions. CC0 by the photographer (Rachel Michetti)."),
    PhotoSource("rocket", *_SK, "data/rocket.jpg", "Public domain (SpaceX)."),
    PhotoSource("hubble_deep_field", *_SK, "data/hubble_deep_field.jpg",
                "Public domain (NASA)."),
    PhotoSource("retina", *_SK, "data/retina.jpg",
                "CC0 1.0 Universal Public Domain Dedication (Mikael Häggström)."),
    PhotoSource("immunohistochemistry", *_SK, "data/ihc.png", "No known copyright restrictions."),
    PhotoSource("stereo_motorcycle", *_SK, "data/motorcycle_left.png", _NOT_STATED),
    PhotoSource("camera", *_SK, "data/camera.png",
                "No copyright restrictions. CC0 by the photographer (Lav Varshney)."),
    PhotoSource("coins", *_SK, "data/coins.png", "No known copyright restrictions."),
    PhotoSource("page", *_SK, "data/page.png", _NOT_STATED),
    PhotoSource("text", *_SK, "data/text.png",
                "No known copyright restrictions, released into the public domain."),
    PhotoSource("china", *_SKL, "datasets/images/china.jpg", _SKL_NOTE.format("danielbuechele")),
    PhotoSource("flower", *_SKL, "datasets/images/flower.jpg", _SKL_NOTE.format("vultilion")),
    PhotoSource("grace_hopper", *_MPL, "mpl-data/sample_data/grace_hopper.jpg", _NOT_STATED),
)


def _package_dir(package: str) -> Path | None:
    """The installed package's folder, found without importing it (fast, no side effects)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_photo_paths(names: list[str] | None = None) -> dict[str, Path]:
    """{name: file} of the catalogue photos present in this environment (catalogue order).

    ``names`` restricts the result; an unknown name raises ValueError. Photos whose package is not
    installed (or whose file this package version does not bundle) are simply absent: see
    `missing_photos` for why.
    """
    known = {p.name for p in CATALOGUE}
    if names is not None and set(names) - known:
        raise ValueError(f"unknown photo(s) {sorted(set(names) - known)}; known: {sorted(known)}")
    out = {}
    for src in CATALOGUE:
        if names is not None and src.name not in names:
            continue
        root = _package_dir(src.package)
        if root is not None and (root / src.relpath).is_file():
            out[src.name] = root / src.relpath
    return out


def missing_photos(catalogue: tuple[PhotoSource, ...] = CATALOGUE) -> dict[str, str]:
    """{name: reason} for catalogue photos not available here."""
    reasons = {}
    for src in catalogue:
        root = _package_dir(src.package)
        if root is None:
            reasons[src.name] = f"{src.distribution} is not installed ({PIP_EXTRA})"
        elif not (root / src.relpath).is_file():
            reasons[src.name] = (f"{src.distribution} {_version(src.distribution)} does not bundle "
                                 f"{src.relpath} (it would be downloaded; skipped)")
    return reasons


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_photo(name: str) -> Image.Image:
    """One catalogue photo at native resolution, in its stored mode (RGB or L)."""
    paths = bundled_photo_paths([name])
    if name not in paths:
        raise FileNotFoundError(f"photo {name!r} is not available: "
                                f"{missing_photos().get(name, 'unknown reason')}")
    with Image.open(paths[name]) as im:
        im.load()
        return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()


def write_photos(out_dir: str | Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Write the available photos as ``<name>.png`` + ``photos.json``; returns the manifest.

    Raises FileNotFoundError (writing nothing) when none of the asked photos is available.
    """
    available = bundled_photo_paths(names)
    if not available:
        raise FileNotFoundError(f"no photo available ({len(names or CATALOGUE)} asked); install "
                                f"the sources with {PIP_EXTRA}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {src.name: src for src in CATALOGUE}
    manifest = []
    for name, path in available.items():
        src = by_name[name]
        image = load_photo(name)
        image.save(out / f"{name}.png", format="PNG")
        manifest.append({
            "name": name, "file": f"{name}.png", "width": image.width, "height": image.height,
            "mode": image.mode, "package": src.distribution,
            "package_version": _version(src.distribution),
            "source_file": f"{src.package}/{src.relpath}", "source_format": path.suffix[1:],
            "license": src.license if src.license is not None else "not stated by the package",
        })
    (out / "photos.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return manifest
