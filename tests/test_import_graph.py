"""No import circles in kvwire, and the GPU kernels' registry fills itself.

The graph counts every ``import`` / ``from ... import`` anywhere in a module, function bodies included
(an import deferred into a function still makes the two modules depend on each other). A name
imported from a package counts as that package's submodule where one exists; importing a submodule
runs its parent package's ``__init__`` but is not an edge to it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "kvwire"


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every ``.py`` under package directory ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(module: str, is_pkg: bool, node: ast.AST, top: str, known) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == top]
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    if pkg.split(".")[0] != top:
        return []
    return [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in known else pkg for a in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its file)."""
    mods = modules(root)
    top = root.name
    graph = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dep in _targets(name, is_pkg, node, top, mods):
                    while dep not in mods and "." in dep:  # a name, not a module: its module
                        dep = dep.rsplit(".", 1)[0]
                    if dep != name and dep in mods:
                        deps.add(dep)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_kvwire_has_no_import_circles():
    found = circles(import_graph(LIB))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_a_circle_is_found(tmp_path):
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f  # deferred: still an edge\n    return f\n")
    (pkg / "c.py").write_text("from . import sub\nimport demo.a\n")  # no circle through c or the packages
    graph = import_graph(pkg)
    assert graph["demo.sub.b"] == {"demo.a"} and graph["demo.a"] == {"demo.sub.b"}
    assert graph["demo.c"] == {"demo.sub", "demo.a"}
    assert circles(graph) == [["demo.a", "demo.sub.b"]]


# ---- the kernel registry ------------------------------------------------------------------------

def test_every_family_registers_and_every_kernel_class_is_registered():
    pytest.importorskip("triton")
    from kvwire.kernels import base

    base._load()
    registered = {cls for classes in base.KERNELS.values() for cls in classes}
    families = base.families()
    assert "token" in families and "granular" in families
    for family in families:
        module = importlib.import_module(f"kvwire.kernels.{family}.kernel")
        assert any(cls.__module__ == module.__name__ for cls in registered), f"family {family} registers no kernel"
    concrete = set()
    for info in pkgutil.walk_packages(importlib.import_module("kvwire.kernels").__path__, "kvwire.kernels."):
        module = importlib.import_module(info.name)
        concrete |= {c for _, c in inspect.getmembers(module, inspect.isclass)
                     if issubclass(c, base.KernelCodec) and not inspect.isabstract(c) and c.names
                     and c.__module__ == module.__name__}
    assert concrete - registered == set(), f"kernel classes not registered: {concrete - registered}"


def test_the_registry_keeps_no_hand_kept_module_list():
    from kvwire.kernels import base

    source = inspect.getsource(base)
    assert "pkgutil.iter_modules" in source  # the families are found, not listed
    lists = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Tuple, ast.List))
             and {getattr(e, "value", None) for e in n.elts} & set(base.families())]
    assert not lists, "a literal list of family names in kernels/base.py"


def test_where_classes_share_a_name_the_order_is_fixed():
    pytest.importorskip("triton")
    from kvwire.kernels import base

    base._load()
    assert [c.__name__ for c in base.KERNELS["int8"]] == ["TokenQuantKernel", "GroupQuantKernel", "ChannelQuantKernel"]
    assert [c.__name__ for c in base.KERNELS["int4"]] == ["TokenQuantKernel", "GroupQuantKernel", "ChannelQuantKernel"]
