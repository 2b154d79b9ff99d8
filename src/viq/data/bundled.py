"""Files that ship inside the package, so the demo and the tests run with no user data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


def bundled_photo() -> Path:
    """Path of the bundled photograph (451×300 cat, CC0; see ``viq/assets/README.md``)."""
    path = Path(str(resources.files("viq").joinpath("assets", "chelsea.jpg")))
    if not path.is_file():
        raise FileNotFoundError(f"bundled photo missing at {path}: reinstall viq "
                                "(pip install -e .)")
    return path


def bundled_photos() -> list[Path]:
    """The real photographs that ship with viq, the cat first, then ``assets/photos/`` in its
    manifest's order (public-domain / CC0 / CC BY files from scikit-image and scikit-learn,
    re-encoded as JPEG; sources and licences in ``photos.json`` and ``viq/assets/README.md``).
    The demo uses these and nothing else, so its inputs do not depend on what else is
    installed (docs/design.md C38)."""
    folder = Path(str(resources.files("viq").joinpath("assets", "photos")))
    manifest = folder / "photos.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"bundled photos missing at {folder}: reinstall viq "
                                "(pip install -e .)")
    paths = [bundled_photo()] + [folder / r["file"] for r in json.loads(manifest.read_text())]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"bundled photo(s) missing: {', '.join(missing)}; reinstall viq "
                                "(pip install -e .)")
    return paths
