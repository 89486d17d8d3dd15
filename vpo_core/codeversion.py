"""Code versions from the import graph.

A step's code version is a hash of its own module and of every project module it imports,
transitively (``import`` statements anywhere in a module, read with :mod:`ast`, so an
import inside a function counts), plus the files it runs or reads outside that graph:
modules started as subprocesses, configuration templates, and the bundled data files
(``vpo_core/data``) any module of the graph names. Comments, docstrings and formatting
do not count: the hash is over the syntax tree. Nothing is listed by hand, so a module
added later (``vpo_core/critique.py`` once was) is covered as soon as it is imported.

In a step's own module (``tasks/<stage>.py``, which holds several steps) the graph starts
from the imports the step's function uses, directly or through the module's other
definitions: curate's split step does not depend on the LLM modules its recheck step
imports, so editing the few-shot demonstrations leaves curate's cache alone.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vpo_core", "tasks", "flows")
DATA = "vpo_core/data"


def module_file(name: str, root: Path) -> Path | None:
    """The source file of project module ``name`` under ``root`` (a package's
    ``__init__.py``), or None for a module outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _imports(tree: ast.AST, name: str, is_package: bool, root: Path) -> set[str]:
    """Project modules a module's import statements name (with their parent packages,
    which Python runs first)."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*base_parts, node.module or ""] if p)
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # submodules
    out = set()
    for mod in found:
        for candidate in (*_parents(mod), mod):
            if module_file(candidate, root) is not None:
                out.add(candidate)
    return out


def _module(name: str, root: Path) -> tuple[str, frozenset[str], frozenset[str]]:
    path = module_file(name, root)
    assert path is not None
    return _analyse(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", root)


@lru_cache(maxsize=4096)
def _analyse(name: str, source: str, is_package: bool, root: Path
             ) -> tuple[str, frozenset[str], frozenset[str]]:
    """A module's normalised syntax tree, the project modules it imports and its short
    string constants (where the data files it reads are named)."""
    tree = ast.parse(source)
    imports = _imports(tree, name, is_package, root)
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) < 200}
    return ast.dump(_strip_docstrings(tree)), frozenset(imports), frozenset(strings)


def import_graph(modules: Iterable[str], root: Path = ROOT) -> dict[str, str]:
    """Every project module reachable from ``modules`` -> its normalised source."""
    seen: dict[str, str] = {}
    todo = [m for name in modules for m in (*_parents(name), name)
            if module_file(m, root) is not None]
    strings: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        source, imports, names = _module(name, root)
        seen[name] = source
        strings |= names
        todo += sorted(imports - seen.keys())
    seen["<data>"] = "\n".join(sorted(strings))
    return seen


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def step_roots(module: str, function: str, root: Path = ROOT) -> list[str]:
    """The project modules that ``function`` of ``module`` uses through the module's
    imports, following the module's own definitions it uses (helpers, constants)."""
    path = module_file(module, root)
    assert path is not None, module
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined: dict[str, ast.AST] = {}
    imported: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                defined |= {n: node for n in _names(target)}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                imported[alias.asname or alias.name] = (
                    sub if module_file(sub, root) is not None else node.module)
    used, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.add(name)
        if name in defined:
            todo += sorted(_names(defined[name]) - used)
    return sorted({imported[n] for n in used if n in imported
                   and module_file(imported[n], root) is not None})


def data_files(strings: str, root: Path = ROOT) -> list[Path]:
    """The bundled data files whose names appear among a graph's string constants."""
    folder = root / DATA
    names = set(strings.splitlines())
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name in names)


def code_version(modules: Iterable[str], files: Iterable[str] = (),
                 root: Path = ROOT, own: str | None = None) -> str:
    """SHA-256 over the import graph of ``modules``, the data files it names and
    ``files`` (paths relative to ``root``: scripts, configuration templates); ``own``, a
    step's own module, counts by its source alone (its imports are in ``modules``)."""
    graph = import_graph(modules, root)
    if own is not None:
        source, _, strings = _module(own, root)
        graph[own] = source
        graph["<data>"] += "\n" + "\n".join(sorted(strings))
    digest = hashlib.sha256()
    for name in sorted(k for k in graph if k != "<data>"):
        digest.update(f"{name}\0{graph[name]}\0".encode())
    for path in data_files(graph["<data>"], root):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()
