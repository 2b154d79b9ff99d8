"""Where the release's weight files are (docs/design.md B6.7): `find_weights` takes the layouts
people download and says what to give when a path is ambiguous; `size_from_path` reads the FSQ
size (A3) from ``model_viq_fsq_<size>.pth`` or ``converted_<size>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from viq.quant.fsq import FSQ_PRESETS


def size_from_path(path: str | Path) -> str | None:
    """FSQ size from ``model_viq_fsq_<size>.pth`` or a ``converted_<size>`` folder, else None."""
    p = Path(path)
    for text in (p.name, *(q.name for q in p.parents)):
        m = (re.fullmatch(r"model_viq_fsq_(\w+)\.pth", text)
             or re.fullmatch(r"converted_(\w+)", text))
        if m:
            return m.group(1).lower()
    return None


def _model_file_in(directory: Path, size: str | None) -> Path | None:
    """The ``model_viq_fsq*.pth`` of a folder (chosen by ``size`` when there are several)."""
    files = sorted(directory.glob("model_viq_fsq*.pth"))
    if size and len(files) > 1:
        files = [f for f in files if size_from_path(f) == size] or files
    if len(files) > 1:
        raise FileNotFoundError(f"{directory}: several model files "
                                f"({', '.join(f.name for f in files)}); choose one with --size "
                                "or pass the .pth file itself to --weights")
    return files[0] if files else None


def _sizes_under(root: Path) -> dict[str, Path]:
    """``converted_<size>/`` folders holding a model file, in ``root`` or one level down (a
    download may keep them under e.g. ``ViQ/``), ordered by codebook size."""
    found: dict[str, Path] = {}
    for d in sorted([*root.glob("converted_*"), *root.glob("*/converted_*")]):
        m = re.fullmatch(r"converted_(\w+)", d.name)
        if m and d.is_dir() and any(d.glob("model_viq_fsq*.pth")):
            found.setdefault(m.group(1).lower(), d)
    order = list(FSQ_PRESETS)
    return dict(sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                      else len(order), kv[0])))


def find_weights(path: str | Path, size: str | None = None) -> tuple[Path, str | None]:
    """``(model file, FSQ size)`` for ``--weights PATH [--size S]``.

    PATH is the ``.pth`` itself, a ``converted_<size>/`` folder, the converter's default
    ``converted/`` folder (its ``model_viq_fsq.pth`` names no size: give ``--size``), or the
    downloaded root holding several ``converted_<size>/`` folders (``--size`` chooses; without it
    the sizes found are listed, unless there is only one).
    """
    p = Path(path)
    size = size.lower() if size else None
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    model_file = p if p.is_file() else _model_file_in(p, size)
    if model_file is None:
        found = _sizes_under(p)
        if not found:
            raise FileNotFoundError(
                f"{p}: no model_viq_fsq_<size>.pth here and no converted_<size>/ folder; "
                "--weights takes the downloaded weights folder (holding converted_<size>/), one "
                "converted_<size>/ folder, the converter's converted/ folder, or the .pth file")
        if size is None and len(found) > 1:
            raise FileNotFoundError(f"{p}: holds the sizes {', '.join(found)}; choose one with "
                                    f"--size (e.g. --size {next(reversed(found))})")
        if size is not None and size not in found:
            raise FileNotFoundError(f"{p}: no converted_{size}/ here; sizes found: "
                                    f"{', '.join(found)} (--size chooses one)")
        model_file = _model_file_in(found[size or next(iter(found))], size)
    named = size_from_path(model_file)
    if size and named and named != size:
        raise ValueError(f"{model_file}: the path says size {named} but --size {size} was given; "
                         f"drop --size or point --weights at converted_{size}/")
    return model_file, size or named
