"""Files that ship inside the package, so the demo and the tests run with no user data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_photo() -> Path:
    """Path of the bundled photograph (451×300 cat, CC0; see ``viq/assets/README.md``)."""
    path = Path(str(resources.files("viq").joinpath("assets", "chelsea.jpg")))
    if not path.is_file():
        raise FileNotFoundError(f"bundled photo missing at {path}: reinstall viq "
                                "(pip install -e .)")
    return path
