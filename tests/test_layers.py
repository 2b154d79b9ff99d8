"""The import contract (docs/design.md D1): the library never imports the application, a lower
layer never imports a higher one, and no module takes part in an import cycle. Function-level
("lazy") imports count like the others. The checker reads the source with ``ast`` (nothing is
imported) and is itself tested on a planted upward import and a planted cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import viq

# Bottom to top. A module belongs to the longest prefix listed; it may import its own layer and
# the layers below. The root package `viq` is the library's facade (its lazy `load_encoder`).
LAYERS: list[tuple[str, ...]] = [
    ("viq.config", "viq.fingerprint", "viq.hub"),
    ("viq.quant",),
    ("viq.data",),
    ("viq.model",),
    ("viq.backends",),
    ("viq.codes",),
    ("viq.supervision",),
    ("viq.train",),
    ("viq.eval",),
    ("viq.release_api",),
    ("viq",),
    # the application
    ("viq.presets",),
    ("viq.bench",),
    ("viq.demo",),
    ("viq.app",),
    ("viq.cli", "viq.__main__"),
]
LIBRARY_TOP = LAYERS.index(("viq",))


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported package module: line}}``, top-level and function-level imports."""
    files = module_files(root)
    package = root.name

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            else:
                continue
            for name in names:
                if name == package or name.startswith(package + "."):
                    target = resolve(name)
                    if target and target != mod:
                        edges.setdefault(target, node.lineno)
        graph[mod] = edges
    return graph


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS (docs/design.md D1)")
    return rank


def upward_imports(graph: dict[str, dict[str, int]], layers: list[tuple[str, ...]]) -> list[str]:
    return [f"{mod} (layer {layers[layer_of(mod, layers)][0]}) imports {dep} (layer "
            f"{layers[layer_of(dep, layers)][0]}) at line {line}"
            for mod, deps in sorted(graph.items()) for dep, line in sorted(deps.items())
            if layer_of(dep, layers) > layer_of(mod, layers)]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


PACKAGE = Path(viq.__file__).parent


def test_no_import_goes_up_a_layer():
    problems = upward_imports(import_graph(PACKAGE), LAYERS)
    assert not problems, "imports against the layering (docs/design.md D1):\n" + "\n".join(
        problems)


def test_no_import_cycles():
    found = cycles(import_graph(PACKAGE))
    assert not found, f"import cycles: {found}"


def test_the_library_never_imports_the_application():
    graph = import_graph(PACKAGE)
    bad = [f"{m} imports {d}" for m, deps in graph.items() for d in deps
           if layer_of(m, LAYERS) <= LIBRARY_TOP < layer_of(d, LAYERS)]
    assert not bad, bad


def test_every_module_has_a_layer():
    for mod in module_files(PACKAGE):
        layer_of(mod, LAYERS)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "viq"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_a_planted_upward_import_and_cycle(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "config.py": "",
        "data/__init__.py": "",
        "data/images.py": "def f():\n    from viq.cli.errors import say  # lazy, still counted\n",
        "cli/__init__.py": "",
        "cli/errors.py": "from viq.data import images\n",
        "model/__init__.py": "",
        "model/a.py": "from . import b\n",
        "model/b.py": "from viq.model.a import x\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph, LAYERS) == [
        "viq.data.images (layer viq.data) imports viq.cli.errors (layer viq.cli) at line 2"]
    assert sorted(cycles(graph)) == [["viq.cli.errors", "viq.data.images"],
                                     ["viq.model.a", "viq.model.b"]]
