"""Where the release's weight files are (docs/design.md B6.7): `find_weights` takes the layouts
people download and says what to give when a path is ambiguous; `locate_weights` also takes a
Hugging Face name (C31: the repository's ``converted_<size>/`` files of the chosen size only);
`size_from_path` reads the FSQ size (A3) from ``model_viq_fsq_<size>.pth`` or ``converted_<size>``.
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


def locate_weights(path: str | Path, size: str | None = None, drawer: bool = False) -> Path:
    """``--weights PATH`` as a local path: PATH itself when it exists or is no Hugging Face name;
    else the model file of the chosen size fetched into the Hugging Face cache (docs/design.md
    C31): from ``org/name`` (``--size`` chooses ``converted_<size>/``, or the root's own files),
    or ``org/name/converted_<size>``; only the model file and ``config.json`` (``drawer``: and
    ``index_drawer.pth``) of that size are downloaded."""
    from viq.hub import parse_name, resolve

    name = None if Path(path).exists() else parse_name(path)
    if name is None:
        return Path(path)
    size = size.lower() if size else None
    named = size_from_path(name.sub) if name.sub else None
    files = ["config.json"] + (["index_drawer.pth"] if drawer else [])
    models = ([f"model_viq_fsq_{named or size}.pth", "model_viq_fsq.pth"] if size or named
              else ["model_viq_fsq*.pth"])
    if size and not named:  # the downloaded root: converted_<size>/ or the root's own files
        models += [f"converted_{size}/{m}" for m in models]
        files += [f"converted_{size}/{f}" for f in files]
    what = (f"{name.sub}/{models[0]}" if named else
            f"size {size} (converted_{size}/{models[0]})" if size else
            "a model file at its root (model_viq_fsq*.pth)")
    fix = None if size or named else "give --size to choose a converted_<size>/ folder"
    folder = resolve(path, models + files, need=[tuple(models)], what=what, hint=_sizes_hint,
                     fix=fix)
    return find_weights(folder, size)[0]


def _sizes_hint(files: list[str]) -> str:
    """``sizes 16k, 64k`` for a repository's (or a cache's) file list."""
    sizes = sorted({m.group(1).lower() for f in files
                    if (m := re.fullmatch(r"(?:.*/)?converted_(\w+)/model_viq_fsq\w*\.pth", f))},
                   key=lambda s: (list(FSQ_PRESETS).index(s) if s in FSQ_PRESETS
                                  else len(FSQ_PRESETS), s))
    return f"sizes {', '.join(sizes)}" if sizes else ""


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
